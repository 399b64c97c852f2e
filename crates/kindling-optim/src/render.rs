//! A quiet, readable renderer for burn-train's `Learner` (feature `train`).

use std::collections::HashMap;
use std::io::Write;

use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{MetricDefinition, MetricId};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};

/// A burn-train renderer that prints one line per epoch and split with the epoch's value of
/// every metric that reported, for example
///
/// ```text
/// epoch 2 train  Loss 0.153 · Accuracy 95.81 %
/// epoch 2 valid  Loss 0.171 · Accuracy 95.10 %
/// ```
///
/// burn's default renderer is a terminal UI (burn's `tui` feature); without that feature burn
/// prints a debug line per batch. This one suits logs, CI and plain terminals. Pass it to
/// `SupervisedTraining::renderer`:
///
/// ```
/// use kindling_optim::EpochRenderer;
///
/// let renderer = Box::new(EpochRenderer::new()); // standard output
/// let to_a_file = EpochRenderer::with_writer(std::io::sink());
/// # let _ = (renderer, to_a_file);
/// // SupervisedTraining::new(dir, train, valid).renderer(renderer) …
/// ```
pub struct EpochRenderer {
    out: Box<dyn Write + Send + Sync>,
    names: HashMap<MetricId, String>,
    /// (metric, epoch value) in the order they first reported in this split.
    values: Vec<(MetricId, String)>,
    epoch: usize,
    split: String,
}

impl std::fmt::Debug for EpochRenderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochRenderer")
            .field("epoch", &self.epoch)
            .field("split", &self.split)
            .finish_non_exhaustive()
    }
}

impl Default for EpochRenderer {
    fn default() -> Self {
        Self::new()
    }
}

impl EpochRenderer {
    /// A renderer that prints to standard output.
    pub fn new() -> Self {
        Self::with_writer(std::io::stdout())
    }

    /// A renderer that writes its lines to `out` (a file, a buffer).
    pub fn with_writer(out: impl Write + Send + Sync + 'static) -> Self {
        Self {
            out: Box::new(out),
            names: HashMap::new(),
            values: Vec::new(),
            epoch: 0,
            split: String::new(),
        }
    }

    fn record(&mut self, state: MetricState) {
        let MetricState::Numeric(entry, _) = state else {
            return;
        };
        // burn formats numeric entries as "epoch <running> <unit> - batch <current> <unit>".
        let formatted = &entry.serialized_entry.formatted;
        let running = formatted
            .strip_prefix("epoch ")
            .and_then(|rest| rest.split(" - batch").next())
            .unwrap_or(formatted)
            .to_string();
        match self
            .values
            .iter_mut()
            .find(|(id, _)| *id == entry.metric_id)
        {
            Some((_, value)) => *value = running,
            None => self.values.push((entry.metric_id, running)),
        }
    }
}

impl MetricsRendererTraining for EpochRenderer {
    fn update_train(&mut self, state: MetricState) {
        self.record(state);
    }

    fn update_valid(&mut self, state: MetricState) {
        self.record(state);
    }
}

impl TrainingProgressLogger for EpochRenderer {
    fn start(
        &mut self,
        _total_epochs: usize,
        starting_epoch: usize,
        _total_items: Option<usize>,
        _label: Option<&str>,
    ) {
        self.epoch = starting_epoch.saturating_sub(1);
    }

    fn update_epoch(&mut self, _epoch: usize) {}

    fn start_split(&mut self, split: &str, _total_items: usize) {
        if split == "train" {
            self.epoch += 1;
        }
        self.split = split.to_string();
        self.values.clear();
    }

    fn update_split(&mut self, _items_processed: usize) {}

    fn end_split(&mut self) {
        if self.values.is_empty() {
            return;
        }
        let line: Vec<String> = self
            .values
            .iter()
            .map(|(id, value)| {
                let name = self.names.get(id).map_or("?", String::as_str);
                format!("{name} {value}")
            })
            .collect();
        // A renderer has no error channel; a closed output only loses the line.
        let _ = writeln!(
            self.out,
            "epoch {} {:<5}  {}",
            self.epoch,
            self.split,
            line.join(" · ")
        );
        let _ = self.out.flush();
    }

    fn end(&mut self) {}

    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for EpochRenderer {
    fn start_global_progress(&mut self, _total_tests: usize) {}

    fn start_test(&mut self, name: &str, total_items: usize) {
        self.start_split(name, total_items);
    }

    fn update_test_progress(&mut self, _items_processed: usize) {}

    fn end_test(&mut self) {
        self.end_split();
    }

    fn end_global_progress(&mut self) {}

    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRendererEvaluation for EpochRenderer {
    fn update_test(&mut self, _name: EvaluationName, state: MetricState) {
        self.record(state);
    }
}

impl MetricsRenderer for EpochRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id, definition.name.to_string());
    }
}
