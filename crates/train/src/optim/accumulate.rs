//! Gradient accumulation over micro-batches.

use glimpse_tensor::{Error, Result, Tensor};

use super::check_float_grad;

/// Adds up the gradients of several micro-batches, to train with a batch larger than fits in
/// memory at once.
///
/// Each [`GradAccumulator::add`] takes one gradient vector aligned with the parameters (`None`
/// counts as zero). [`GradAccumulator::take_mean`] then gives the average over the
/// micro-batches, which for a loss that is a mean over equal-sized micro-batches is the
/// full-batch gradient. Sums are kept in f32 for half gradients (f64 stays f64), so that many
/// small f16 contributions do not lose precision; the results have that dtype.
#[derive(Debug, Default)]
pub struct GradAccumulator {
    sums: Vec<Option<Tensor>>,
    micro_batches: usize,
}

impl GradAccumulator {
    /// An empty accumulator.
    pub fn new() -> GradAccumulator {
        GradAccumulator::default()
    }

    /// How many micro-batches were added since the last take.
    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// True when nothing was added since the last take.
    pub fn is_empty(&self) -> bool {
        self.micro_batches == 0
    }

    /// Adds one micro-batch's gradients. Every call must pass as many slots as the first, and
    /// a gradient must keep its shape from one micro-batch to the next; on error nothing is
    /// added.
    pub fn add(&mut self, grads: &[Option<Tensor>]) -> Result<()> {
        const OP: &str = "GradAccumulator::add";
        if self.micro_batches > 0 && grads.len() != self.sums.len() {
            return Err(Error::invalid(
                OP,
                format!(
                    "{} gradient slots, but earlier micro-batches had {}",
                    grads.len(),
                    self.sums.len()
                ),
            ));
        }
        let mut sums = Vec::with_capacity(grads.len());
        for (i, g) in grads.iter().enumerate() {
            let prev = self.sums.get(i).and_then(Option::as_ref);
            let sum = match (prev, g) {
                (prev, None) => prev.cloned(),
                (None, Some(g)) => {
                    check_float_grad(OP, g)?;
                    Some(g.to_dtype(g.dtype().compute_dtype())?)
                }
                (Some(s), Some(g)) => {
                    check_float_grad(OP, g)?;
                    if s.shape() != g.shape() {
                        return Err(Error::bad_shape(
                            OP,
                            format!(
                                "gradient {i} changed shape between micro-batches (was {})",
                                s.shape()
                            ),
                            g.shape(),
                        ));
                    }
                    Some(s.add(&g.to_dtype(s.dtype())?)?)
                }
            };
            sums.push(sum);
        }
        self.sums = sums;
        self.micro_batches += 1;
        Ok(())
    }

    /// The sum of the gradients added since the last take; resets the accumulator.
    pub fn take_sum(&mut self) -> Result<Vec<Option<Tensor>>> {
        self.check_not_empty("GradAccumulator::take_sum")?;
        self.micro_batches = 0;
        Ok(std::mem::take(&mut self.sums))
    }

    /// The mean of the gradients added since the last take (their sum divided by the number
    /// of micro-batches, `None` slots counting as zero); resets the accumulator.
    pub fn take_mean(&mut self) -> Result<Vec<Option<Tensor>>> {
        self.check_not_empty("GradAccumulator::take_mean")?;
        if self.micro_batches == 1 {
            // The mean of one micro-batch is its gradient (x / 1 is exact): skip the pass.
            let means = std::mem::take(&mut self.sums);
            self.reset();
            return Ok(means);
        }
        let n = self.micro_batches as f64;
        let means = self
            .sums
            .iter()
            .map(|s| s.as_ref().map(|s| s.div(&s.scalar_like(n)?)).transpose())
            .collect::<Result<Vec<_>>>()?;
        self.reset();
        Ok(means)
    }

    /// Drops whatever was accumulated.
    pub fn reset(&mut self) {
        self.sums.clear();
        self.micro_batches = 0;
    }

    fn check_not_empty(&self, op: &'static str) -> Result<()> {
        if self.is_empty() {
            Err(Error::invalid(op, "no micro-batch gradients were added"))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use glimpse_tensor::{DType, Device};

    use super::*;

    fn dev() -> Device {
        glimpse_cpu::device()
    }

    #[test]
    fn mean_of_micro_batches_is_full_batch_gradient() -> Result<()> {
        // loss(w, b) = mean_i (x_i . w + b): the gradient is (mean_i x_i, 1), whatever w.
        let d = dev();
        let x = Tensor::rand_normal(0.0, 1.0, [12, 5], DType::F32, 3, &d)?;
        let grad_of = |x: &Tensor| -> Result<Vec<Option<Tensor>>> {
            Ok(vec![
                Some(x.mean(0)?),
                Some(Tensor::ones((), DType::F32, &d)?),
                None,
            ])
        };
        let full = grad_of(&x)?;
        let mut acc = GradAccumulator::new();
        for k in 0..4 {
            acc.add(&grad_of(&x.narrow(0, 3 * k, 3)?)?)?;
        }
        assert_eq!(acc.micro_batches(), 4);
        let mean = acc.take_mean()?;
        assert!(acc.is_empty());
        for (a, b) in mean.iter().zip(&full) {
            match (a, b) {
                (Some(a), Some(b)) => {
                    for (x, y) in a.to_vec::<f32>()?.iter().zip(b.to_vec::<f32>()?) {
                        assert!((x - y).abs() < 1e-6, "{x} vs {y}");
                    }
                }
                (None, None) => {}
                _ => panic!("slots differ"),
            }
        }
        Ok(())
    }

    #[test]
    fn sums_none_and_half_gradients() -> Result<()> {
        let d = dev();
        let one = Tensor::ones(2, DType::F16, &d)?;
        let mut acc = GradAccumulator::new();
        acc.add(&[None, Some(one.clone())])?;
        acc.add(&[Some(one.clone()), Some(one.clone())])?;
        acc.add(&[None, None])?;
        let sum = acc.take_sum()?;
        assert_eq!(sum[0].as_ref().unwrap().to_vec::<f32>()?, vec![1.0, 1.0]);
        assert_eq!(sum[1].as_ref().unwrap().to_vec::<f32>()?, vec![2.0, 2.0]);
        assert!(acc.take_sum().is_err());

        acc.add(&[Some(one.clone())])?;
        acc.add(&[None])?;
        let mean = acc.take_mean()?;
        assert_eq!(mean[0].as_ref().unwrap().to_vec::<f32>()?, vec![0.5, 0.5]);
        assert!(acc.take_mean().is_err());
        Ok(())
    }

    #[test]
    fn rejects_mismatches() -> Result<()> {
        let d = dev();
        let a = Tensor::ones(2, DType::F32, &d)?;
        let b = Tensor::ones(3, DType::F32, &d)?;
        let mut acc = GradAccumulator::new();
        acc.add(&[Some(a.clone()), None])?;
        assert!(acc.add(&[Some(a.clone())]).is_err());
        assert!(acc.add(&[Some(b), None]).is_err());
        let ids = Tensor::ones(2, DType::U32, &d)?;
        assert!(acc.add(&[None, Some(ids)]).is_err());
        assert_eq!(acc.micro_batches(), 1);
        acc.reset();
        assert!(acc.is_empty());
        Ok(())
    }
}
