//! Taking turns: every server gets short slices of the same load in a rotating order, so that
//! the machine's drift (other work on a shared host) falls on all of them alike, and each
//! figure reported is the median over that server's slices.

use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

use crate::target::Target;

/// Which way a metric is good; decides how ratios are oriented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
    /// A count that must be zero (leaks): no ratio, a verdict.
    Zero,
}

impl Better {
    pub fn as_str(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
            Better::Zero => "zero",
        }
    }
}

/// One measured quantity: a key for the JSON, a label and unit for the tables.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub better: Better,
}

/// What one slice measured.
pub type Sample = Vec<(Metric, f64)>;

/// How the turns are laid out.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Measured rounds; each round gives every target one slice.
    pub rounds: usize,
    /// Length of one measured slice.
    pub slice: Duration,
    /// Pause after each slice, so one server's teardown does not fall into the next slice.
    pub pause: Duration,
}

/// The order of the targets in round `r`: rotated by one every two rounds and reversed every
/// other round (A B C D, D C B A, B C D A, A D C B, ...), so no server always follows the same
/// one or always goes first.
fn order(n: usize, r: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).map(|i| (i + r / 2) % n).collect();
    if r % 2 == 1 {
        v.reverse();
    }
    v
}

/// Runs one unrecorded warm-up slice per target, then `plan.rounds` rounds, and returns one
/// record per target with each metric's median and per-slice values. A failed slice is
/// reported on stderr and left out.
pub async fn take_turns<F, Fut>(
    scenario: &str,
    case: &str,
    targets: &[Target],
    plan: Plan,
    mut run: F,
) -> Vec<Value>
where
    F: FnMut(Target, Duration) -> Fut,
    Fut: Future<Output = Result<Sample>>,
{
    let n = targets.len();
    let warmup = (plan.slice / 3).max(Duration::from_millis(100));
    for t in targets {
        if let Err(e) = run(t.clone(), warmup).await {
            eprintln!("  {scenario} {case}: {} warm-up failed: {e:#}", t.name);
        }
        tokio::time::sleep(plan.pause).await;
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); n];
    for r in 0..plan.rounds {
        for i in order(n, r) {
            match run(targets[i].clone(), plan.slice).await {
                Ok(s) => samples[i].push(s),
                Err(e) => eprintln!(
                    "  {scenario} {case}: {} slice failed: {e:#}",
                    targets[i].name
                ),
            }
            tokio::time::sleep(plan.pause).await;
        }
    }
    targets
        .iter()
        .zip(samples)
        .map(|(t, s)| record(scenario, case, &t.name, &s))
        .collect()
}

/// A record from the samples of one target: per metric, the median and the values.
pub fn record(scenario: &str, case: &str, target: &str, samples: &[Sample]) -> Value {
    let mut metrics: Vec<(Metric, Vec<f64>)> = Vec::new();
    for s in samples {
        for (m, v) in s {
            match metrics.iter_mut().find(|(k, _)| k.key == m.key) {
                Some((_, vs)) => vs.push(*v),
                None => metrics.push((*m, vec![*v])),
            }
        }
    }
    let metrics: Vec<Value> = metrics
        .into_iter()
        .map(|(m, vs)| {
            json!({
                "key": m.key, "label": m.label, "unit": m.unit, "better": m.better.as_str(),
                "median": median(&vs), "values": vs,
            })
        })
        .collect();
    json!({
        "scenario": scenario, "case": case, "target": target,
        "slices": samples.len(), "metrics": metrics,
    })
}

/// The median of some values (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// The `p`-quantile (0..=1) of sorted values, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_takes_every_position_and_alternates_direction() {
        assert_eq!(order(2, 0), vec![0, 1]);
        assert_eq!(order(2, 1), vec![1, 0]);
        assert_eq!(order(4, 2), vec![1, 2, 3, 0]);
        assert_eq!(order(4, 3), vec![0, 3, 2, 1]);
    }

    #[test]
    fn median_and_percentile_follow_their_definitions() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
    }
}
