//! Each tenant's tweets per second: on/off bursts — `burst_s` seconds at `rate` tweets/s, then a
//! gap drawn from a distribution — starting at a random phase.
//!
//! The heavy-tailed option is shaped like the Azure Functions 2019 trace (Shahrad et al.,
//! "Serverless in the Wild", USENIX ATC '20): there, invocation rates span eight orders of
//! magnitude, 45 % of applications are invoked once per hour or less and 81 % once per minute
//! or less on average (their Figure 5), and the inter-arrival times of most applications vary
//! more than a Poisson process's (coefficient of variation above 1, their Figure 6). We take the
//! shape, not a fit: a lognormal gap with a chosen mean and coefficient of variation (2 by
//! default), and tenants' mean gaps of minutes to an hour in the sweep.

use serde::Serialize;

/// How long the gaps between a tenant's bursts are.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Gaps {
    Fixed {
        mean_s: f64,
    },
    /// Poisson bursts.
    Exponential {
        mean_s: f64,
    },
    /// Heavy-tailed (Azure-trace-like): lognormal with this mean and coefficient of variation.
    Lognormal {
        mean_s: f64,
        cv: f64,
    },
}

impl Gaps {
    pub fn mean_s(&self) -> f64 {
        match *self {
            Gaps::Fixed { mean_s } | Gaps::Exponential { mean_s } | Gaps::Lognormal { mean_s, .. } => mean_s,
        }
    }

    pub fn with_mean(self, mean_s: f64) -> Gaps {
        match self {
            Gaps::Fixed { .. } => Gaps::Fixed { mean_s },
            Gaps::Exponential { .. } => Gaps::Exponential { mean_s },
            Gaps::Lognormal { cv, .. } => Gaps::Lognormal { mean_s, cv },
        }
    }

    /// One gap, in seconds.
    pub fn draw(&self, rng: &mut fastrand::Rng) -> f64 {
        // 1 − U is in (0, 1]: its logarithm is finite.
        let uniform = |rng: &mut fastrand::Rng| 1.0 - rng.f64();
        match *self {
            Gaps::Fixed { mean_s } => mean_s,
            Gaps::Exponential { mean_s } => -mean_s * uniform(rng).ln(),
            Gaps::Lognormal { mean_s, cv } => {
                let sigma2 = (1.0 + cv * cv).ln();
                let mu = mean_s.ln() - sigma2 / 2.0;
                // Box–Muller.
                let normal = (-2.0 * uniform(rng).ln()).sqrt() * (std::f64::consts::TAU * rng.f64()).cos();
                (mu + sigma2.sqrt() * normal).exp()
            }
        }
    }
}

/// One tenant's load.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bursts {
    pub burst_s: f64,
    /// Tweets per second during a burst.
    pub rate: f64,
    pub gaps: Gaps,
}

impl Bursts {
    /// Tweets arriving in each of `seconds` seconds, from a random phase of the on/off cycle.
    pub fn series(&self, seconds: usize, rng: &mut fastrand::Rng) -> Vec<f64> {
        let mut series = vec![0.0; seconds];
        // A random phase: somewhere in a burst or in the gap before the next.
        let cycle = self.burst_s + self.gaps.mean_s();
        let mut t = -rng.f64() * cycle;
        while t < seconds as f64 {
            let (start, end) = (t, t + self.burst_s);
            // Each second gets the share of it the burst covers.
            let first = start.max(0.0).floor() as usize;
            for (s, tweets) in series.iter_mut().enumerate().take(end.ceil().max(0.0) as usize).skip(first) {
                let covered = (end.min(s as f64 + 1.0) - start.max(s as f64)).max(0.0);
                *tweets += self.rate * covered;
            }
            t = end + self.gaps.draw(rng);
        }
        series
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_distributions_have_their_means() {
        let mut rng = fastrand::Rng::with_seed(7);
        for gaps in [
            Gaps::Fixed { mean_s: 300.0 },
            Gaps::Exponential { mean_s: 300.0 },
            Gaps::Lognormal { mean_s: 300.0, cv: 2.0 },
        ] {
            let draws: Vec<f64> = (0..200_000).map(|_| gaps.draw(&mut rng)).collect();
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            assert!((mean / 300.0 - 1.0).abs() < 0.03, "{gaps:?}: {mean}");
            if let Gaps::Lognormal { .. } = gaps {
                let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / draws.len() as f64;
                let cv = var.sqrt() / mean;
                assert!((1.6..2.4).contains(&cv), "heavy tail: cv {cv}");
            }
        }
    }

    #[test]
    fn bursts_carry_rate_times_length() {
        let bursts = Bursts { burst_s: 20.5, rate: 100.0, gaps: Gaps::Fixed { mean_s: 79.5 } };
        let series = bursts.series(100_000, &mut fastrand::Rng::with_seed(1));
        let total: f64 = series.iter().sum();
        // 1,000 cycles of 100 s, 2,050 tweets each (± one cycle at the edges).
        assert!((total / 2_050_000.0 - 1.0).abs() < 0.002, "{total}");
        assert!(series.iter().all(|&r| r <= 100.0 + 1e-9));
    }
}
