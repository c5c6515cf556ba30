//! Batches built on a background thread, in a reproducible order that can resume mid-epoch.
//!
//! A [`Loader`] walks epochs `start.epoch..end_epoch`. Epoch `e` visits the dataset in the
//! order [`LoaderConfig::epoch_order`]`(e)`, a permutation drawn from
//! [`Rng::derive`]`(seed, &[e])` (or `0..len` unshuffled), cut into consecutive batches. Since
//! the order of an epoch depends on nothing but `(seed, e)`, a run restarted at
//! `LoaderPosition { epoch, batch }` yields exactly the batches the interrupted run had left,
//! provided the batch builder is itself a function of `(epoch, indices)` (seed any
//! augmentation from them, as [`super::Augment`] does).
//!
//! A worker thread builds up to `prefetch` batches ahead of the consumer through a bounded
//! channel, so data preparation overlaps the training step without unbounded memory.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use glimpse_tensor::{Error, Result};

use super::rng::Rng;

/// A place in the stream of batches: batch `batch` (0-based, within the epoch) of epoch
/// `epoch`. What a checkpoint records to resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct LoaderPosition {
    /// The epoch, from 0.
    pub epoch: u64,
    /// The batch within the epoch, from 0.
    pub batch: usize,
}

impl LoaderPosition {
    /// The position `(epoch, batch)`.
    pub fn new(epoch: u64, batch: usize) -> Self {
        LoaderPosition { epoch, batch }
    }
}

/// What a [`Loader`] iterates over and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Number of samples in the dataset; the batch builder gets indices in `0..len`.
    pub len: usize,
    /// Samples per batch.
    pub batch_size: usize,
    /// Whether to leave out the last, smaller batch of an epoch (when `len` is not a multiple
    /// of `batch_size`); its samples then skip that epoch (a different subset each epoch
    /// when shuffling).
    pub drop_last: bool,
    /// Whether each epoch visits the samples in a fresh random order.
    pub shuffle: bool,
    /// The seed of the epoch permutations.
    pub seed: u64,
    /// Where to start: `(0, 0)` for a new run, a checkpoint's position to resume. A batch
    /// index equal to [`LoaderConfig::batches_per_epoch`] means that epoch is finished.
    pub start: LoaderPosition,
    /// The epoch to stop before (exclusive); `u64::MAX` for a loader that never ends.
    pub end_epoch: u64,
    /// How many built batches may wait for the consumer (0: each is built on demand, in
    /// lockstep with the consumer).
    pub prefetch: usize,
}

impl LoaderConfig {
    /// One shuffled epoch from the start, seed 0, keeping the last partial batch, prefetching
    /// 4 batches.
    pub fn new(len: usize, batch_size: usize) -> Self {
        LoaderConfig {
            len,
            batch_size,
            drop_last: false,
            shuffle: true,
            seed: 0,
            start: LoaderPosition::default(),
            end_epoch: 1,
            prefetch: 4,
        }
    }

    /// Batches per epoch: `len / batch_size`, rounded up unless `drop_last`. 0 when
    /// `batch_size` is 0.
    pub fn batches_per_epoch(&self) -> usize {
        if self.batch_size == 0 {
            0
        } else if self.drop_last {
            self.len / self.batch_size
        } else {
            self.len.div_ceil(self.batch_size)
        }
    }

    /// The order in which epoch `epoch` visits the samples: a permutation of `0..len`.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        if self.shuffle {
            Rng::derive(self.seed, &[epoch]).permutation(self.len)
        } else {
            (0..self.len).collect()
        }
    }

    /// The sample indices of batch `batch` of an epoch whose order is `order` (from
    /// [`LoaderConfig::epoch_order`]); empty past the last batch.
    pub fn batch_of<'a>(&self, order: &'a [usize], batch: usize) -> &'a [usize] {
        let start = batch.saturating_mul(self.batch_size).min(order.len());
        let end = start.saturating_add(self.batch_size).min(order.len());
        if batch >= self.batches_per_epoch() {
            &[]
        } else {
            &order[start..end]
        }
    }

    /// Total number of batches from `start` to `end_epoch` (saturating at `u64::MAX`).
    pub fn total_batches(&self) -> u64 {
        let start = self.normalised_start();
        if start.epoch >= self.end_epoch {
            return 0;
        }
        let per_epoch = self.batches_per_epoch() as u64;
        (self.end_epoch - start.epoch)
            .saturating_mul(per_epoch)
            .saturating_sub(start.batch as u64)
    }

    /// `start`, with "batch `batches_per_epoch` of epoch `e`" written as "batch 0 of `e + 1`".
    fn normalised_start(&self) -> LoaderPosition {
        let per_epoch = self.batches_per_epoch();
        if per_epoch > 0 && self.start.batch == per_epoch {
            LoaderPosition::new(self.start.epoch.saturating_add(1), 0)
        } else {
            self.start
        }
    }

    /// Checks that the configuration yields batches and that `start` is inside an epoch.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::invalid("Loader", "batch_size must be positive"));
        }
        let per_epoch = self.batches_per_epoch();
        if per_epoch == 0 {
            return Err(Error::invalid(
                "Loader",
                format!(
                    "a dataset of {} samples gives no batch of {}{}",
                    self.len,
                    self.batch_size,
                    if self.drop_last {
                        " with drop_last"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if self.start.batch > per_epoch {
            return Err(Error::invalid(
                "Loader",
                format!(
                    "start batch {} is past the {per_epoch} batches of an epoch",
                    self.start.batch
                ),
            ));
        }
        Ok(())
    }
}

/// One batch and where it sits in the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch<T> {
    /// The epoch it belongs to.
    pub epoch: u64,
    /// Its index within the epoch.
    pub index: usize,
    /// What the batch builder made of its indices.
    pub data: T,
}

impl<T> Batch<T> {
    /// Where this batch sits.
    pub fn position(&self) -> LoaderPosition {
        LoaderPosition::new(self.epoch, self.index)
    }

    /// The position to resume from once this batch has been used (a `start` for
    /// [`LoaderConfig`]).
    pub fn next_position(&self) -> LoaderPosition {
        LoaderPosition::new(self.epoch, self.index + 1)
    }
}

/// An iterator over the batches of [`LoaderConfig`], built by a worker thread.
///
/// Each item is `Ok(Batch)` in order, or one `Err` after which the iteration ends: the
/// builder's own error, or a report that it panicked. Dropping the loader (even mid-epoch, or
/// with a never-ending `end_epoch`) stops the worker and waits for it; at most the batch
/// being built is finished first.
#[derive(Debug)]
pub struct Loader<T> {
    rx: Option<Receiver<Result<Batch<T>>>>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
    next: LoaderPosition,
    batches_per_epoch: usize,
    remaining: u64,
    done: bool,
}

impl<T: Send + 'static> Loader<T> {
    /// Starts the worker. `build(epoch, indices)` makes one batch from its sample indices;
    /// it runs on the worker thread, one batch at a time, in order. Fails when the
    /// configuration is invalid (see [`LoaderConfig::validate`]) or the thread cannot start.
    pub fn new<F>(config: LoaderConfig, build: F) -> Result<Self>
    where
        F: FnMut(u64, &[usize]) -> Result<T> + Send + 'static,
    {
        config.validate()?;
        let next = config.normalised_start();
        let remaining = config.total_batches();
        let batches_per_epoch = config.batches_per_epoch();
        let (tx, rx) = sync_channel(config.prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        let worker_stop = Arc::clone(&stop);
        let worker = std::thread::Builder::new()
            .name("glimpse-loader".into())
            .spawn(move || work(config, next, build, tx, worker_stop))
            .map_err(|e| Error::io("glimpse-loader thread", e))?;
        Ok(Loader {
            rx: Some(rx),
            stop,
            worker: Some(worker),
            next,
            batches_per_epoch,
            remaining,
            done: false,
        })
    }
}

impl<T> Loader<T> {
    /// The position of the next batch to come: what to save in a checkpoint taken now, after
    /// the batches already received were used.
    pub fn position(&self) -> LoaderPosition {
        self.next
    }

    /// Batches still to come (fewer if an error ends the iteration).
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver makes a worker blocked in `send` return at once.
        self.rx = None;
        if let Some(worker) = self.worker.take() {
            // The worker catches the builder's panics, so it cannot have panicked itself.
            let _ = worker.join();
        }
    }
}

impl<T> Iterator for Loader<T> {
    type Item = Result<Batch<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let received = self.rx.as_ref().map(Receiver::recv);
        match received {
            Some(Ok(Ok(batch))) => {
                self.remaining = self.remaining.saturating_sub(1);
                self.next = if batch.index + 1 >= self.batches_per_epoch {
                    LoaderPosition::new(batch.epoch.saturating_add(1), 0)
                } else {
                    batch.next_position()
                };
                Some(Ok(batch))
            }
            Some(Ok(Err(e))) => {
                self.done = true;
                self.shutdown();
                Some(Err(e))
            }
            // The worker hung up: the normal end, unless batches were still due.
            Some(Err(_)) | None => {
                self.done = true;
                self.shutdown();
                (self.remaining > 0).then(|| {
                    Err(Error::invalid(
                        "Loader",
                        format!(
                            "the worker stopped with {} batches still due",
                            self.remaining
                        ),
                    ))
                })
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            return (0, Some(0));
        }
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        // An error may end the iteration early, and always takes one item.
        (0, n.checked_add(1))
    }
}

impl<T> Drop for Loader<T> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The worker: builds and sends batches in order until the end, an error, or a stop.
fn work<T, F>(
    config: LoaderConfig,
    start: LoaderPosition,
    mut build: F,
    tx: SyncSender<Result<Batch<T>>>,
    stop: Arc<AtomicBool>,
) where
    F: FnMut(u64, &[usize]) -> Result<T>,
{
    let per_epoch = config.batches_per_epoch();
    let mut first_batch = start.batch;
    for epoch in start.epoch..config.end_epoch {
        let order = config.epoch_order(epoch);
        for index in first_batch..per_epoch {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let indices = config.batch_of(&order, index);
            let item = match catch_unwind(AssertUnwindSafe(|| build(epoch, indices))) {
                Ok(Ok(data)) => Ok(Batch { epoch, index, data }),
                Ok(Err(e)) => Err(e),
                Err(payload) => Err(Error::invalid(
                    "Loader",
                    format!(
                        "the batch builder panicked on batch {index} of epoch {epoch}: {}",
                        panic_message(payload.as_ref())
                    ),
                )),
            };
            let failed = item.is_err();
            // A send error means the consumer is gone; an error item ends the stream.
            if tx.send(item).is_err() || failed {
                return;
            }
        }
        first_batch = 0;
    }
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a non-string panic payload)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    /// Every batch as (epoch, index, indices).
    fn collect(config: LoaderConfig) -> Vec<(u64, usize, Vec<usize>)> {
        Loader::new(config, |_, idx: &[usize]| Ok(idx.to_vec()))
            .unwrap()
            .map(|b| {
                let b = b.unwrap();
                (b.epoch, b.index, b.data)
            })
            .collect()
    }

    #[test]
    fn one_epoch_unshuffled() {
        let mut cfg = LoaderConfig::new(10, 4);
        cfg.shuffle = false;
        let batches = collect(cfg.clone());
        let expected = vec![
            (0, 0, vec![0, 1, 2, 3]),
            (0, 1, vec![4, 5, 6, 7]),
            (0, 2, vec![8, 9]),
        ];
        assert_eq!(batches, expected);
        cfg.drop_last = true;
        assert_eq!(collect(cfg), expected[..2]);
    }

    #[test]
    fn epochs_are_shuffled_differently_and_reproducibly() {
        let mut cfg = LoaderConfig::new(50, 50);
        cfg.end_epoch = 3;
        cfg.seed = 9;
        let a = collect(cfg.clone());
        assert_eq!(a, collect(cfg.clone()));
        assert_eq!(a.len(), 3);
        assert_ne!(a[0].2, a[1].2);
        assert_ne!(a[1].2, a[2].2);
        assert_eq!(a[1].2, cfg.epoch_order(1));
        cfg.seed = 10;
        assert_ne!(collect(cfg)[0].2, a[0].2);
    }

    #[test]
    fn bad_configurations_are_rejected() {
        let build = |_: u64, idx: &[usize]| Ok(idx.len());
        let cases = [
            (LoaderConfig::new(10, 0), "batch_size"),
            (LoaderConfig::new(0, 4), "no batch"),
            (
                LoaderConfig {
                    drop_last: true,
                    ..LoaderConfig::new(3, 4)
                },
                "drop_last",
            ),
            (
                LoaderConfig {
                    start: LoaderPosition::new(0, 4),
                    ..LoaderConfig::new(10, 4)
                },
                "start batch 4",
            ),
        ];
        for (cfg, needle) in cases {
            let e = Loader::new(cfg, build).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        // Already finished: nothing to do, no error.
        let done = LoaderConfig {
            start: LoaderPosition::new(1, 0),
            ..LoaderConfig::new(10, 4)
        };
        assert_eq!(Loader::new(done, build).unwrap().count(), 0);
    }

    #[test]
    fn builder_errors_and_panics_surface() {
        let mut cfg = LoaderConfig::new(100, 10);
        cfg.shuffle = false;
        let failing = |_: u64, idx: &[usize]| {
            if idx[0] == 20 {
                Err(Error::invalid("test", "bad sample 20"))
            } else {
                Ok(idx[0])
            }
        };
        let items: Vec<_> = Loader::new(cfg.clone(), failing).unwrap().collect();
        assert_eq!(items.len(), 3);
        assert_eq!(
            *items[1].as_ref().unwrap(),
            Batch {
                epoch: 0,
                index: 1,
                data: 10
            }
        );
        assert!(
            items[2]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("bad sample 20")
        );

        let panicking = |_: u64, idx: &[usize]| -> Result<usize> {
            assert!(idx[0] != 30, "sample 30 is cursed");
            Ok(idx[0])
        };
        let items: Vec<_> = Loader::new(cfg, panicking).unwrap().collect();
        assert_eq!(items.len(), 4);
        let e = items[3].as_ref().unwrap_err().to_string();
        assert!(
            e.contains("panicked on batch 3 of epoch 0") && e.contains("cursed"),
            "{e}"
        );
    }

    #[test]
    fn dropping_stops_the_worker() {
        let built = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&built);
        let token = Arc::new(());
        let held = Arc::clone(&token);
        let cfg = LoaderConfig {
            end_epoch: u64::MAX,
            prefetch: 2,
            ..LoaderConfig::new(1000, 8)
        };
        let mut loader = Loader::new(cfg, move |_, idx: &[usize]| {
            let _keep = &held;
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(idx.to_vec())
        })
        .unwrap();
        for _ in 0..3 {
            loader.next().unwrap().unwrap();
        }
        let t = Instant::now();
        drop(loader);
        assert!(t.elapsed() < Duration::from_secs(5));
        // The worker (and the builder it owned) is gone: nothing else holds the token.
        assert_eq!(Arc::strong_count(&token), 1);
        let n = built.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(built.load(Ordering::SeqCst), n);
        // 3 consumed, at most 2 waiting, 1 blocked in `send`, 1 more racing the stop flag.
        assert!(n <= 7, "{n} batches built");
    }

    #[test]
    fn position_tracks_what_was_consumed() {
        let cfg = LoaderConfig {
            end_epoch: 2,
            ..LoaderConfig::new(10, 5)
        };
        let mut loader = Loader::new(cfg, |_, idx: &[usize]| Ok(idx.len())).unwrap();
        assert_eq!(loader.remaining(), 4);
        assert_eq!(loader.position(), LoaderPosition::new(0, 0));
        loader.next().unwrap().unwrap();
        assert_eq!(loader.position(), LoaderPosition::new(0, 1));
        loader.next().unwrap().unwrap();
        assert_eq!(loader.position(), LoaderPosition::new(1, 0));
        assert_eq!(loader.remaining(), 2);
        assert_eq!(loader.by_ref().count(), 2);
        assert_eq!(loader.position(), LoaderPosition::new(2, 0));
        assert!(loader.next().is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn every_index_once_per_epoch(
            len in 1usize..300,
            batch_size in 1usize..64,
            drop_last in any::<bool>(),
            shuffle in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let cfg = LoaderConfig {
                drop_last,
                shuffle,
                seed,
                end_epoch: 2,
                ..LoaderConfig::new(len, batch_size)
            };
            if drop_last && len < batch_size {
                prop_assert!(Loader::new(cfg, |_, _: &[usize]| Ok(())).is_err());
                return Ok(());
            }
            let per_epoch = cfg.batches_per_epoch();
            let batches = collect(cfg);
            prop_assert_eq!(batches.len(), 2 * per_epoch);
            for epoch in 0..2u64 {
                let mut seen: Vec<usize> = batches
                    .iter()
                    .filter(|b| b.0 == epoch)
                    .flat_map(|b| b.2.iter().copied())
                    .collect();
                for (k, b) in batches.iter().filter(|b| b.0 == epoch).enumerate() {
                    prop_assert_eq!(b.1, k);
                    prop_assert!(b.2.len() <= batch_size);
                    prop_assert!(!drop_last || b.2.len() == batch_size);
                }
                seen.sort_unstable();
                let before = seen.len();
                seen.dedup();
                prop_assert_eq!(seen.len(), before, "an index came twice");
                if drop_last {
                    prop_assert_eq!(seen.len(), per_epoch * batch_size);
                    prop_assert!(seen.iter().all(|&i| i < len));
                } else {
                    prop_assert_eq!(seen, (0..len).collect::<Vec<_>>());
                }
            }
        }

        #[test]
        fn resume_yields_the_rest_of_the_run(
            len in 1usize..200,
            batch_size in 1usize..40,
            drop_last in any::<bool>(),
            seed in any::<u64>(),
            cut in 0usize..1000,
            prefetch in 0usize..4,
        ) {
            prop_assume!(!(drop_last && len < batch_size));
            let cfg = LoaderConfig {
                drop_last,
                seed,
                prefetch,
                end_epoch: 3,
                ..LoaderConfig::new(len, batch_size)
            };
            let full = collect(cfg.clone());
            let per_epoch = cfg.batches_per_epoch();
            // Resume after `cut` batches, written both ways at epoch boundaries.
            let cut = cut % (full.len() + 1);
            let mut starts = vec![LoaderPosition::new((cut / per_epoch) as u64, cut % per_epoch)];
            if cut > 0 && cut.is_multiple_of(per_epoch) {
                starts.push(LoaderPosition::new((cut / per_epoch - 1) as u64, per_epoch));
            }
            for start in starts {
                let resumed = collect(LoaderConfig { start, ..cfg.clone() });
                prop_assert_eq!(&resumed[..], &full[cut..], "start {:?}", start);
            }
        }
    }
}
