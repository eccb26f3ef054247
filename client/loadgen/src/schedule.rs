//! Open-loop send times, drawn up front: nanoseconds from the start of the run, ascending;
//! and each request's deadline class when the run mixes several.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Exp, Gamma};

use crate::args::{Arrival, DeadlineClass};

/// Send times in [0, horizon_s) at a mean `rate` per second (`cv`: gamma arrivals' coefficient
/// of variation of the gaps).
pub fn send_times(arrival: Arrival, rate: f64, horizon_s: f64, seed: u64, cv: f64) -> Vec<u64> {
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
        Arrival::Gamma => {
            let mut rng = StdRng::seed_from_u64(seed);
            // shape 1/cv^2, scale cv^2/rate: mean gap 1/rate, standard deviation cv/rate
            let shape = 1.0 / (cv * cv);
            let Ok(gap) = Gamma::new(shape, 1.0 / (rate * shape)) else {
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

/// The deadline class (an index into `mix`) of each of `count` requests in send order, from a
/// stream of its own: the arrival times do not depend on the mix, and a seed replays both.
pub fn classes(count: usize, mix: &[DeadlineClass], seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6d69_7800_0000_0000);
    let last = mix.len().saturating_sub(1);
    (0..count)
        .map(|_| {
            let u: f64 = rng.random();
            let mut bound = 0.0;
            let mut class = last;
            for (i, c) in mix.iter().enumerate() {
                bound += c.share;
                if u < bound {
                    class = i;
                    break;
                }
            }
            class as u8
        })
        .collect()
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
        let times = send_times(Arrival::Poisson, rate, horizon, 1, 1.0);
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
        let a = send_times(Arrival::Poisson, 1000.0, 1.0, 3, 1.0);
        assert_eq!(a, send_times(Arrival::Poisson, 1000.0, 1.0, 3, 1.0));
        assert_ne!(a, send_times(Arrival::Poisson, 1000.0, 1.0, 4, 1.0));
    }

    #[test]
    fn constant_rate_is_evenly_spaced() {
        let times = send_times(Arrival::Constant, 1000.0, 2.0, 0, 1.0);
        assert_eq!(times.len(), 2000);
        assert_eq!(times[0], 0);
        assert!(times
            .windows(2)
            .all(|w| (w[1] - w[0]).abs_diff(1_000_000) <= 1));
        assert!(send_times(Arrival::Constant, 0.0, 1.0, 0, 1.0).is_empty());
        assert!(send_times(Arrival::Poisson, 10.0, 0.0, 0, 1.0).is_empty());
    }

    #[test]
    fn gamma_gaps_have_the_mean_rate_and_the_asked_variation() {
        for cv in [0.5, 2.0, 4.0] {
            let rate = 5000.0;
            let times = send_times(Arrival::Gamma, rate, 200.0, 7, cv);
            let gaps: Vec<f64> = times
                .windows(2)
                .map(|w| (w[1] - w[0]) as f64 / 1e9)
                .collect();
            let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
            let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
            assert!((mean * rate - 1.0).abs() < 0.03, "cv {cv}: mean gap {mean}");
            assert!(
                (var.sqrt() / mean / cv - 1.0).abs() < 0.1,
                "cv {cv}: measured {}",
                var.sqrt() / mean
            );
        }
        assert_eq!(
            send_times(Arrival::Gamma, 100.0, 1.0, 2, 4.0),
            send_times(Arrival::Gamma, 100.0, 1.0, 2, 4.0)
        );
    }

    #[test]
    fn classes_follow_the_shares_and_replay() {
        let mix = [
            DeadlineClass {
                deadline_ms: 5.0,
                share: 0.25,
            },
            DeadlineClass {
                deadline_ms: 50.0,
                share: 0.75,
            },
        ];
        let classes = classes(100_000, &mix, 1);
        let tight = classes.iter().filter(|c| **c == 0).count() as f64 / 1e5;
        assert!((tight - 0.25).abs() < 0.01, "{tight}");
        assert!(classes.iter().all(|c| *c <= 1));
        assert_eq!(classes, super::classes(100_000, &mix, 1));
        assert_ne!(classes, super::classes(100_000, &mix, 2));
    }
}
