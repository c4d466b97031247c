//! A node's power from its CPU utilisation: the linear model P = P_idle + (P_max − P_idle)·u, or
//! an 11-point curve (0 %, 10 %, … 100 % load) interpolated as SPECpower_ssj2008 reports one.
//!
//! Sources: the linear model and its per-vCPU coefficients are Cloud Carbon Footprint's
//! methodology (the energy experiment uses the same, `loadtest/energy/accounting.py`); idle
//! power as a share of peak runs from about 0.5 for the servers Barroso & Hölzle describe ("The
//! Case for Energy-Proportional Computing", IEEE Computer 40(12), 2007) down to 0.2–0.3 in
//! recent SPECpower_ssj2008 results, so the projection sweeps P_idle/P_max over 0.2–0.6 instead
//! of trusting one figure.

use serde::Serialize;

/// How a node's power follows its utilisation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Curve {
    Linear {
        idle_w: f64,
        max_w: f64,
    },
    /// Watts at 0 %, 10 %, … 100 % utilisation.
    Points {
        watts: [f64; 11],
    },
}

impl Curve {
    /// A node's power at utilisation `u` (clamped to 0..=1).
    pub fn watts(&self, u: f64) -> f64 {
        let u = u.clamp(0.0, 1.0);
        match self {
            Curve::Linear { idle_w, max_w } => idle_w + (max_w - idle_w) * u,
            Curve::Points { watts } => {
                let x = u * 10.0;
                let i = (x.floor() as usize).min(9);
                watts[i] + (watts[i + 1] - watts[i]) * (x - i as f64)
            }
        }
    }

    /// Power of an idle node (it runs, nothing requested).
    pub fn idle_w(&self) -> f64 {
        self.watts(0.0)
    }

    /// The linear model's slope, W per unit of utilisation (the curve's mean slope otherwise).
    pub fn dynamic_w(&self) -> f64 {
        self.watts(1.0) - self.watts(0.0)
    }

    /// The curve at another idle/peak ratio, keeping its peak: the linear model's idle power,
    /// or every point rescaled between the new idle power and the peak.
    pub fn with_idle_ratio(&self, ratio: f64) -> Curve {
        let max_w = self.watts(1.0);
        match self {
            Curve::Linear { .. } => Curve::Linear { idle_w: ratio * max_w, max_w },
            Curve::Points { watts } => {
                let (lo, hi) = (watts[0], watts[10]);
                let span = (hi - lo).max(f64::EPSILON);
                Curve::Points {
                    watts: watts.map(|w| ratio * max_w + (w - lo) / span * (max_w - ratio * max_w)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_model_goes_from_idle_to_max() {
        let c = Curve::Linear { idle_w: 40.0, max_w: 100.0 };
        assert_eq!((c.watts(0.0), c.watts(0.5), c.watts(1.0)), (40.0, 70.0, 100.0));
        assert_eq!(c.watts(1.7), 100.0, "clamped");
        assert_eq!(c.with_idle_ratio(0.2).watts(0.0), 20.0);
    }

    #[test]
    fn eleven_points_interpolate_between_neighbours() {
        let watts = [50.0, 60.0, 66.0, 72.0, 77.0, 82.0, 87.0, 91.0, 95.0, 98.0, 100.0];
        let c = Curve::Points { watts };
        assert_eq!(c.watts(0.0), 50.0);
        assert!((c.watts(0.15) - 63.0).abs() < 1e-9);
        assert_eq!(c.watts(1.0), 100.0);
        let rescaled = c.with_idle_ratio(0.3);
        assert!((rescaled.watts(0.0) - 30.0).abs() < 1e-9);
        assert!((rescaled.watts(1.0) - 100.0).abs() < 1e-9);
        assert!(rescaled.watts(0.5) > rescaled.watts(0.4), "still rising");
    }
}
