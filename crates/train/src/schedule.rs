//! Learning-rate schedules.
//!
//! ```
//! # fn main() -> glimpse_tensor::Result<()> {
//! use glimpse_train::schedule::LrSchedule;
//! let s = LrSchedule::warmup_cosine(1e-3, 100, 1000, 1e-5)?;
//! assert!((s.lr(0) - 1e-5).abs() < 1e-18); // 1e-3 * 1 / 100
//! assert_eq!(s.lr(99), 1e-3); // the end of the warm-up
//! assert_eq!(s.lr(100), 1e-3); // the start of the cosine
//! assert_eq!(s.lr(999), 1e-5); // the last step reaches min_lr
//! # Ok(()) }
//! ```

use glimpse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};

/// A learning rate as a function of the optimizer step (counted from 0).
///
/// Serialised with a `kind` tag, e.g.
/// `{"kind": "warmup_cosine", "base_lr": 5e-4, "warmup_steps": 500, "total_steps": 10000,
/// "min_lr": 1e-6}`. Build it with [`LrSchedule::constant`] or [`LrSchedule::warmup_cosine`],
/// or call [`LrSchedule::validate`] after deserialising: [`LrSchedule::lr`] never panics, but
/// only a validated schedule gives the documented curve.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// The same learning rate at every step.
    Constant {
        /// The learning rate.
        lr: f64,
    },
    /// Linear warm-up then cosine decay:
    ///
    /// * for `step < warmup_steps`: `base_lr * (step + 1) / warmup_steps`, so the first step
    ///   already moves and step `warmup_steps - 1` uses `base_lr`;
    /// * then `min_lr + (base_lr - min_lr) * (1 + cos(pi * t)) / 2` with
    ///   `t = (step - warmup_steps) / (total_steps - 1 - warmup_steps)`, going from `base_lr`
    ///   at `step = warmup_steps` to `min_lr` at `step = total_steps - 1`;
    /// * `min_lr` from there on.
    WarmupCosine {
        /// The peak learning rate, reached at the end of the warm-up.
        base_lr: f64,
        /// Steps of linear warm-up (0 for none).
        warmup_steps: u64,
        /// The length of the run: the last step, `total_steps - 1`, uses `min_lr`.
        total_steps: u64,
        /// The final learning rate.
        min_lr: f64,
    },
}

impl LrSchedule {
    /// A constant learning rate (finite and >= 0).
    pub fn constant(lr: f64) -> Result<LrSchedule> {
        let s = LrSchedule::Constant { lr };
        s.validate()?;
        Ok(s)
    }

    /// Linear warm-up over `warmup_steps` steps to `base_lr`, then cosine decay to `min_lr`
    /// at step `total_steps - 1`. Needs `0 <= min_lr <= base_lr` (finite) and
    /// `total_steps > warmup_steps`.
    pub fn warmup_cosine(
        base_lr: f64,
        warmup_steps: u64,
        total_steps: u64,
        min_lr: f64,
    ) -> Result<LrSchedule> {
        let s = LrSchedule::WarmupCosine {
            base_lr,
            warmup_steps,
            total_steps,
            min_lr,
        };
        s.validate()?;
        Ok(s)
    }

    /// Checks the parameters (for schedules deserialised from a config).
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "LrSchedule";
        let check_lr = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(Error::invalid(
                    OP,
                    format!("{name} must be finite and >= 0, got {v}"),
                ))
            }
        };
        match *self {
            LrSchedule::Constant { lr } => check_lr("lr", lr),
            LrSchedule::WarmupCosine {
                base_lr,
                warmup_steps,
                total_steps,
                min_lr,
            } => {
                check_lr("base_lr", base_lr)?;
                check_lr("min_lr", min_lr)?;
                if min_lr > base_lr {
                    return Err(Error::invalid(
                        OP,
                        format!("min_lr ({min_lr}) must not exceed base_lr ({base_lr})"),
                    ));
                }
                if total_steps <= warmup_steps {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "total_steps ({total_steps}) must exceed warmup_steps \
                             ({warmup_steps}): the cosine phase needs at least one step"
                        ),
                    ));
                }
                Ok(())
            }
        }
    }

    /// The learning rate of optimizer step `step` (0 for the first step).
    pub fn lr(&self, step: u64) -> f64 {
        match *self {
            LrSchedule::Constant { lr } => lr,
            LrSchedule::WarmupCosine {
                base_lr,
                warmup_steps,
                total_steps,
                min_lr,
            } => {
                if step < warmup_steps {
                    // The ratio first, so that the last warm-up step gives exactly base_lr.
                    return base_lr * ((step + 1) as f64 / warmup_steps as f64);
                }
                // Saturating: an unvalidated schedule must not panic on overflow.
                let span = total_steps.saturating_sub(1).saturating_sub(warmup_steps);
                let done = step - warmup_steps;
                if done >= span {
                    // Also covers a one-step cosine phase (span 0): its only step is the last.
                    return min_lr;
                }
                let t = done as f64 / span as f64;
                // Written as a decrease from base_lr so that t = 0 gives exactly base_lr (the
                // warm-up's last value); the bounds absorb rounding at the other end.
                let decay = 0.5 * (1.0 - (std::f64::consts::PI * t).cos());
                (base_lr - (base_lr - min_lr) * decay)
                    .max(min_lr)
                    .min(base_lr)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn endpoints() -> Result<()> {
        let s = LrSchedule::warmup_cosine(1.0, 10, 111, 0.1)?;
        assert_eq!(s.lr(0), 0.1);
        assert_eq!(s.lr(4), 0.5);
        assert_eq!(s.lr(9), 1.0);
        assert_eq!(s.lr(10), 1.0);
        assert!((s.lr(60) - 0.55).abs() < 1e-12, "{}", s.lr(60));
        assert_eq!(s.lr(110), 0.1);
        assert_eq!(s.lr(111), 0.1);
        assert_eq!(s.lr(u64::MAX), 0.1);

        let no_warmup = LrSchedule::warmup_cosine(2.0, 0, 5, 0.0)?;
        let lrs: Vec<f64> = (0..6).map(|i| no_warmup.lr(i)).collect();
        assert_eq!(lrs[0], 2.0);
        assert!((lrs[2] - 1.0).abs() < 1e-12);
        assert_eq!(&lrs[4..], &[0.0, 0.0]);

        // A single cosine step is the last step.
        let short = LrSchedule::warmup_cosine(1.0, 2, 3, 0.25)?;
        assert_eq!([short.lr(0), short.lr(1), short.lr(2)], [0.5, 1.0, 0.25]);

        let c = LrSchedule::constant(3e-4)?;
        assert_eq!((c.lr(0), c.lr(1_000_000)), (3e-4, 3e-4));
        Ok(())
    }

    #[test]
    fn validation() {
        assert!(LrSchedule::constant(-1.0).is_err());
        assert!(LrSchedule::constant(f64::INFINITY).is_err());
        assert!(LrSchedule::warmup_cosine(1.0, 10, 10, 0.0).is_err());
        assert!(LrSchedule::warmup_cosine(1.0, 10, 5, 0.0).is_err());
        assert!(LrSchedule::warmup_cosine(1.0, 0, 0, 0.0).is_err());
        assert!(LrSchedule::warmup_cosine(1.0, 0, 10, 2.0).is_err());
        assert!(LrSchedule::warmup_cosine(f64::NAN, 0, 10, 0.0).is_err());
        assert!(LrSchedule::warmup_cosine(1.0, 0, 10, -0.1).is_err());
        // An invalid deserialised schedule still gives some number without panicking.
        let bad = LrSchedule::WarmupCosine {
            base_lr: 1.0,
            warmup_steps: 10,
            total_steps: 0,
            min_lr: 0.0,
        };
        assert!(bad.validate().is_err());
        assert!((0..20).map(|s| bad.lr(s)).all(f64::is_finite));
    }

    #[test]
    fn serde_round_trip() {
        let s = LrSchedule::warmup_cosine(5e-4, 500, 10_000, 1e-6).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""kind":"warmup_cosine""#), "{json}");
        assert_eq!(serde_json::from_str::<LrSchedule>(&json).unwrap(), s);
        let c: LrSchedule = serde_json::from_str(r#"{"kind":"constant","lr":0.1}"#).unwrap();
        assert_eq!(c, LrSchedule::Constant { lr: 0.1 });
    }

    proptest! {
        #[test]
        fn monotone_and_continuous(
            base_lr in 1e-6f64..1.0,
            min_frac in 0.0f64..1.0,
            warmup in 0u64..50,
            extra in 1u64..200,
        ) {
            let min_lr = base_lr * min_frac;
            let total = warmup + extra;
            let s = LrSchedule::warmup_cosine(base_lr, warmup, total, min_lr).unwrap();
            // Warm-up rises strictly, in equal increments.
            for step in 1..warmup {
                prop_assert!(s.lr(step) > s.lr(step - 1));
            }
            if warmup > 0 {
                prop_assert_eq!(s.lr(warmup - 1), base_lr);
                // Continuity at the boundary: the cosine phase starts where warm-up ended.
                prop_assert_eq!(s.lr(warmup), if extra == 1 { min_lr } else { base_lr });
            }
            // The cosine phase never rises and stays within [min_lr, base_lr].
            for step in warmup + 1..total + 5 {
                prop_assert!(s.lr(step) <= s.lr(step - 1));
                prop_assert!(s.lr(step) >= min_lr && s.lr(step) <= base_lr);
            }
            prop_assert_eq!(s.lr(total - 1), min_lr);
            prop_assert_eq!(s.lr(total + 1000), min_lr);
        }
    }
}
