//! glimpse-train: everything needed to train glimpse models.
//!
//! * [`autodiff`]: a device decorator that records operations and computes gradients.
//! * [`optim`]: SGD (momentum, Nesterov) and AdamW, gradient clipping, dynamic loss scaling.
//! * [`schedule`]: learning-rate schedules (linear warm-up then cosine).
//! * [`losses`]: cross-entropy, CLIP's contrastive loss, image-text matching, language modelling.
//! * [`data`]: Fashion-MNIST, a synthetic captioned-shapes set, batching on a background thread.
//! * [`plot`]: loss and accuracy curves drawn to PNG.

pub mod autodiff;
pub mod data;
pub mod losses;
pub mod optim;
pub mod plot;
pub mod schedule;

pub mod checkpoint;
pub mod init;
pub mod tasks;
pub mod trainer;
