//! Text for the language model: a synthetic corpus with latent structure, or a PTB-format file.

use std::collections::HashMap;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

/// A tokenised corpus: ids into a vocabulary, most frequent first.
pub struct Corpus {
    /// Words by id.
    pub vocab: Vec<String>,
    /// The token stream.
    pub tokens: Vec<usize>,
}

/// A synthetic corpus: `clusters` groups of `per_cluster` words, Zipfian frequencies inside each
/// group, and a sparse Markov chain over groups (each group is followed by one of 3 others), so
/// words of a group are interchangeable in context — structure a good code can share.
pub fn synthetic(clusters: usize, per_cluster: usize, length: usize, seed: u64) -> Corpus {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let successors: Vec<[usize; 3]> = (0..clusters)
        .map(|_| std::array::from_fn(|_| rng.random_range(0..clusters)))
        .collect();
    let zipf: Vec<f64> = (1..=per_cluster).map(|r| 1.0 / r as f64).collect();
    let total: f64 = zipf.iter().sum();
    let mut cluster = 0;
    let mut tokens = Vec::with_capacity(length);
    for _ in 0..length {
        cluster = successors[cluster][rng.random_range(0..3)];
        let mut u = rng.random::<f64>() * total;
        let mut rank = 0;
        while rank + 1 < per_cluster && u > zipf[rank] {
            u -= zipf[rank];
            rank += 1;
        }
        tokens.push(cluster * per_cluster + rank);
    }
    let vocab = (0..clusters * per_cluster)
        .map(|i| format!("w{}_{}", i / per_cluster, i % per_cluster))
        .collect();
    Corpus { vocab, tokens }
}

/// Reads PTB's plain-text format (space-separated tokens, one sentence a line; an `<eos>` token
/// ends each line), keeping the `max_vocab` most frequent words and mapping the rest to `<unk>`.
pub fn read_ptb(text: &str, max_vocab: usize) -> Corpus {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().chain(["<eos>"]).collect())
        .collect();
    for w in lines.iter().flatten() {
        *counts.entry(w).or_default() += 1;
    }
    let mut words: Vec<(&str, usize)> = counts.into_iter().collect();
    words.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut vocab: Vec<String> = words
        .iter()
        .take(max_vocab.saturating_sub(1))
        .map(|(w, _)| w.to_string())
        .collect();
    vocab.push("<unk>".into());
    let index: HashMap<&str, usize> = vocab
        .iter()
        .enumerate()
        .map(|(i, w)| (w.as_str(), i))
        .collect();
    let unk = vocab.len() - 1;
    let tokens = lines
        .iter()
        .flatten()
        .map(|w| *index.get(w).unwrap_or(&unk))
        .collect();
    Corpus { vocab, tokens }
}
