//! Open-loop send times, drawn up front: nanoseconds from the start of the run, ascending.

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Exp};

use crate::args::Arrival;

/// Send times in [0, horizon_s) at a mean `rate` per second.
pub fn send_times(arrival: Arrival, rate: f64, horizon_s: f64, seed: u64) -> Vec<u64> {
    if !(rate > 0.0 && horizon_s > 0.0) {
        return Vec::new();
    }
    let expected = rate * horizon_s;
    let mut times = Vec::with_capacity((expected + 6.0 * expected.sqrt() + 16.0) as usize);
    match arrival {
        Arrival::Constant => {
            let count = (expected.ceil() as u64).max(1);
            times.extend(
                (0..count)
                    .map(|i| i as f64 / rate)
                    .filter(|t| *t < horizon_s)
                    .map(to_ns),
            );
        }
        Arrival::Poisson => {
            let mut rng = StdRng::seed_from_u64(seed);
            // Exp::new only fails for a negative or NaN rate, excluded above.
            let Ok(gap) = Exp::new(rate) else {
                return times;
            };
            let mut t = 0.0;
            loop {
                t += gap.sample(&mut rng);
                if t >= horizon_s {
                    break;
                }
                times.push(to_ns(t));
            }
        }
    }
    times
}

fn to_ns(seconds: f64) -> u64 {
    (seconds * 1e9) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_counts_and_gaps_have_the_right_statistics() {
        let (rate, horizon) = (20_000.0, 10.0);
        let times = send_times(Arrival::Poisson, rate, horizon, 1);
        let n = times.len() as f64;
        // Count ~ Poisson(200k): within 5 standard deviations.
        assert!(
            (n - rate * horizon).abs() < 5.0 * (rate * horizon).sqrt(),
            "count {n}"
        );
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert!(*times.last().unwrap() < 10_000_000_000);
        let gaps: Vec<f64> = times
            .windows(2)
            .map(|w| (w[1] - w[0]) as f64 / 1e9)
            .collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        // Exponential gaps: mean 1/rate, coefficient of variation 1.
        assert!((mean * rate - 1.0).abs() < 0.02, "mean gap {mean}");
        assert!(
            (var.sqrt() / mean - 1.0).abs() < 0.02,
            "cv {}",
            var.sqrt() / mean
        );
        // Memorylessness: P(gap > 1/rate) = e^-1.
        let over = gaps.iter().filter(|g| **g > 1.0 / rate).count() as f64 / gaps.len() as f64;
        assert!((over - (-1.0f64).exp()).abs() < 0.01, "tail {over}");
        // Counts per 10 ms bin: variance equals the mean (index of dispersion 1).
        let mut bins = vec![0.0f64; 1000];
        for t in &times {
            bins[(*t / 10_000_000) as usize] += 1.0;
        }
        let bmean = bins.iter().sum::<f64>() / bins.len() as f64;
        let bvar = bins.iter().map(|b| (b - bmean).powi(2)).sum::<f64>() / bins.len() as f64;
        assert!(
            (bvar / bmean - 1.0).abs() < 0.15,
            "dispersion {}",
            bvar / bmean
        );
    }

    #[test]
    fn seeds_replay_and_differ() {
        let a = send_times(Arrival::Poisson, 1000.0, 1.0, 3);
        assert_eq!(a, send_times(Arrival::Poisson, 1000.0, 1.0, 3));
        assert_ne!(a, send_times(Arrival::Poisson, 1000.0, 1.0, 4));
    }

    #[test]
    fn constant_rate_is_evenly_spaced() {
        let times = send_times(Arrival::Constant, 1000.0, 2.0, 0);
        assert_eq!(times.len(), 2000);
        assert_eq!(times[0], 0);
        assert!(times
            .windows(2)
            .all(|w| (w[1] - w[0]).abs_diff(1_000_000) <= 1));
        assert!(send_times(Arrival::Constant, 0.0, 1.0, 0).is_empty());
        assert!(send_times(Arrival::Poisson, 10.0, 0.0, 0).is_empty());
    }
}
