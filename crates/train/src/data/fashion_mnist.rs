//! Fashion-MNIST: 70 000 greyscale 28x28 images of clothing in 10 classes, read from the four
//! IDX files the dataset ships as (gzip-compressed or not).
//!
//! The IDX format is a 4-byte magic (`0x00 0x00`, the element type, the number of
//! dimensions), one big-endian `u32` per dimension, then the elements in row-major order.
//! Images are `0x00000803` (unsigned bytes, 3 dimensions: count, rows, columns), labels
//! `0x00000801` (unsigned bytes, 1 dimension: count).

use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use glimpse_tensor::{Device, Error, Result, Tensor};

use super::augment::{Augment, AugmentParams};

/// Where Debian's `dataset-fashion-mnist` package installs the four IDX files.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Mean of the training pixels scaled to `[0, 1]`, the usual normalisation constant.
pub const MEAN: f32 = 0.2860;

/// Standard deviation of the training pixels scaled to `[0, 1]`.
pub const STD: f32 = 0.3530;

/// Number of classes.
pub const NUM_CLASSES: usize = 10;

/// The class names, indexed by label.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Which half of Fashion-MNIST: the 60 000 training or the 10 000 test images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`.
    Train,
    /// `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`.
    Test,
}

impl Split {
    /// The file names (without `.gz`) of the images and the labels.
    pub fn file_names(self) -> (&'static str, &'static str) {
        match self {
            Split::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            Split::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        }
    }
}

/// A split of Fashion-MNIST held in memory as bytes (47 MB for the training set).
///
/// The fields are public for direct access; [`FashionMnist::load`] and
/// [`FashionMnist::from_idx_bytes`] guarantee `images.len() == labels.len() * rows * cols` and
/// labels below [`NUM_CLASSES`], which the other methods rely on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FashionMnist {
    /// Pixels, `N * rows * cols`, row-major, 0 = background, 255 = foreground.
    pub images: Vec<u8>,
    /// Labels, `N`, each below [`NUM_CLASSES`].
    pub labels: Vec<u8>,
    /// Image height (28).
    pub rows: usize,
    /// Image width (28).
    pub cols: usize,
}

/// A batch of normalised images and their labels, ready to become tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBatch {
    /// Pixels, `(B, C, H, W)` row-major, normalised as `(p / 255 - mean) / std`.
    pub pixels: Vec<f32>,
    /// Class labels, `B`.
    pub labels: Vec<u32>,
    /// `[B, C, H, W]`.
    pub shape: [usize; 4],
}

impl ImageBatch {
    /// The number of images.
    pub fn len(&self) -> usize {
        self.shape[0]
    }

    /// Whether the batch holds no image.
    pub fn is_empty(&self) -> bool {
        self.shape[0] == 0
    }

    /// The pixels as an `F32` tensor of shape `(B, C, H, W)`.
    pub fn pixels_tensor(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_slice(&self.pixels, self.shape, device)
    }

    /// The labels as a `U32` tensor of shape `(B,)`.
    pub fn labels_tensor(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_slice(&self.labels, [self.labels.len()], device)
    }
}

impl FashionMnist {
    /// Loads a split from `dir`, reading `NAME` or, when it is absent, `NAME.gz` for each of
    /// the two files. When neither exists, the error says how to get the dataset.
    pub fn load(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let dir = dir.as_ref();
        let (images_name, labels_name) = split.file_names();
        let images_path = find_file(dir, images_name)?;
        let labels_path = find_file(dir, labels_name)?;
        Self::from_files(&images_path, &labels_path)
    }

    /// Loads the images and labels from two IDX files (gzip-compressed or not: the content
    /// decides, not the name).
    pub fn from_files(images: impl AsRef<Path>, labels: impl AsRef<Path>) -> Result<Self> {
        let (images, labels) = (images.as_ref(), labels.as_ref());
        let image_bytes = read_maybe_gz(images)?;
        let label_bytes = read_maybe_gz(labels)?;
        Self::parse(
            &image_bytes,
            &images.display().to_string(),
            &label_bytes,
            &labels.display().to_string(),
        )
    }

    /// Parses uncompressed IDX bytes already in memory.
    pub fn from_idx_bytes(images: &[u8], labels: &[u8]) -> Result<Self> {
        Self::parse(images, "<images>", labels, "<labels>")
    }

    fn parse(images: &[u8], images_name: &str, labels: &[u8], labels_name: &str) -> Result<Self> {
        let (image_dims, pixels) = parse_idx(images, images_name, IMAGES_MAGIC, "images")?;
        let (label_dims, label_data) = parse_idx(labels, labels_name, LABELS_MAGIC, "labels")?;
        let (n_images, rows, cols) = (image_dims[0], image_dims[1], image_dims[2]);
        if rows == 0 || cols == 0 {
            return Err(bad_data(
                images_name,
                format!("images of {rows}x{cols} pixels"),
            ));
        }
        if n_images != label_dims[0] {
            return Err(Error::invalid(
                "FashionMnist",
                format!(
                    "{images_name} holds {n_images} images but {labels_name} holds {} labels",
                    label_dims[0]
                ),
            ));
        }
        if let Some(pos) = label_data.iter().position(|&l| l as usize >= NUM_CLASSES) {
            return Err(bad_data(
                labels_name,
                format!(
                    "label {} at index {pos} is not a class (0..={})",
                    label_data[pos],
                    NUM_CLASSES - 1
                ),
            ));
        }
        Ok(FashionMnist {
            images: pixels.to_vec(),
            labels: label_data.to_vec(),
            rows,
            cols,
        })
    }

    /// The images and labels as uncompressed IDX bytes, the inverse of
    /// [`FashionMnist::from_idx_bytes`].
    pub fn to_idx_bytes(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let dim = |n: usize| {
            u32::try_from(n).map_err(|_| {
                Error::invalid("FashionMnist", format!("{n} does not fit an IDX dimension"))
            })
        };
        let mut images = Vec::with_capacity(16 + self.images.len());
        images.extend_from_slice(&IMAGES_MAGIC.to_be_bytes());
        for n in [self.len(), self.rows, self.cols] {
            images.extend_from_slice(&dim(n)?.to_be_bytes());
        }
        images.extend_from_slice(&self.images);
        let mut labels = Vec::with_capacity(8 + self.labels.len());
        labels.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
        labels.extend_from_slice(&dim(self.labels.len())?.to_be_bytes());
        labels.extend_from_slice(&self.labels);
        Ok((images, labels))
    }

    /// Writes the split's two IDX files into `dir` (which must exist), gzip-compressed with a
    /// `.gz` suffix when `gzip` is set: a small stand-in dataset for tests of code that loads
    /// Fashion-MNIST from a directory.
    pub fn save(&self, dir: impl AsRef<Path>, split: Split, gzip: bool) -> Result<()> {
        let dir = dir.as_ref();
        let (images, labels) = self.to_idx_bytes()?;
        let (images_name, labels_name) = split.file_names();
        for (name, bytes) in [(images_name, images), (labels_name, labels)] {
            let suffix = if gzip { ".gz" } else { "" };
            let path = dir.join(format!("{name}{suffix}"));
            let bytes = if gzip {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&bytes)
                    .and_then(|()| enc.finish())
                    .map_err(|e| Error::io(&path, e))?
            } else {
                bytes
            };
            std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image, `rows * cols`.
    pub fn image_len(&self) -> usize {
        self.rows * self.cols
    }

    /// The pixels of image `i`, `rows * cols` bytes.
    ///
    /// # Panics
    ///
    /// When `i >= len()`, as slice indexing does; [`FashionMnist::batch`] checks its indices
    /// and returns an error instead.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// The label of image `i`.
    ///
    /// # Panics
    ///
    /// When `i >= len()`.
    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    /// A learnable stand-in of `len` 28x28 images for tests and examples (write it out with
    /// [`FashionMnist::save`]): seeded random labels, and every image bright (200) at the
    /// pixels whose index is its label modulo 10, dark (20) elsewhere.
    pub fn synthetic(len: usize, seed: u64) -> FashionMnist {
        let mut rng = super::Rng::new(seed);
        let labels: Vec<u8> = (0..len)
            .map(|_| rng.below(NUM_CLASSES as u64) as u8)
            .collect();
        let images = labels
            .iter()
            .flat_map(|&l| {
                (0..28 * 28).map(move |p| if p % 10 == usize::from(l) { 200 } else { 20 })
            })
            .collect();
        FashionMnist {
            images,
            labels,
            rows: 28,
            cols: 28,
        }
    }

    /// The first `n` images only (all of them if there are fewer): quick runs and smoke tests.
    pub fn truncate(&mut self, n: usize) {
        let n = n.min(self.len());
        self.labels.truncate(n);
        self.images.truncate(n * self.image_len());
    }

    /// Builds the batch of the images at `indices`, normalised with [`MEAN`] and [`STD`].
    ///
    /// With `augment`, each image is shifted and flipped as drawn by
    /// [`Augment::params`]`(epoch, index)`, keyed by the dataset index, so the result does not
    /// depend on the batch composition; `epoch` is unused without it. Fails on an index out
    /// of range.
    pub fn batch(
        &self,
        indices: &[usize],
        augment: Option<&Augment>,
        epoch: u64,
    ) -> Result<ImageBatch> {
        let n = self.image_len();
        let mut pixels = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        let mut scratch = vec![0u8; n];
        // One lookup table instead of a division per pixel.
        let table: Vec<f32> = (0..=255u8)
            .map(|p| (f32::from(p) / 255.0 - MEAN) / STD)
            .collect();
        for &i in indices {
            if i >= self.len() {
                return Err(Error::IndexOutOfRange {
                    op: "FashionMnist::batch",
                    index: i,
                    size: self.len(),
                });
            }
            let src = self.image(i);
            let params = augment.map_or(AugmentParams::IDENTITY, |a| a.params(epoch, i));
            let img = if params == AugmentParams::IDENTITY {
                src
            } else {
                Augment::apply(params, src, &mut scratch, 1, self.rows, self.cols, 0)?;
                &scratch
            };
            pixels.extend(img.iter().map(|&p| table[usize::from(p)]));
            labels.push(u32::from(self.labels[i]));
        }
        Ok(ImageBatch {
            pixels,
            labels,
            shape: [indices.len(), 1, self.rows, self.cols],
        })
    }
}

/// `dir/name` if it exists, else `dir/name.gz` if that exists, else an error that says how to
/// get the dataset.
fn find_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let plain = dir.join(name);
    if plain.is_file() {
        return Ok(plain);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    let msg = format!(
        "Fashion-MNIST not found in {} (looked for {name}[.gz]; a split needs \
         train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz], or \
         t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]): install Debian's \
         package with `apt install dataset-fashion-mnist`, or pass --data-dir pointing at a \
         folder with the four IDX files",
        dir.display()
    );
    Err(Error::io(
        dir,
        std::io::Error::new(ErrorKind::NotFound, msg),
    ))
}

/// Reads a file, gunzipping it when it starts with the gzip magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(bytes);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| {
            let msg = format!("not a valid gzip file: {e}");
            Error::io(path, std::io::Error::new(ErrorKind::InvalidData, msg))
        })?;
    Ok(out)
}

/// A malformed file: an I/O error of kind `InvalidData`, so the message starts with the file.
fn bad_data(name: &str, msg: String) -> Error {
    Error::io(name, std::io::Error::new(ErrorKind::InvalidData, msg))
}

/// Splits an IDX file of unsigned bytes into its dimensions and its data, checking the magic
/// and that the data is exactly as long as the dimensions say.
fn parse_idx<'a>(
    bytes: &'a [u8],
    name: &str,
    magic: u32,
    what: &str,
) -> Result<(Vec<usize>, &'a [u8])> {
    let ndim = (magic & 0xff) as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < 4 {
        return Err(bad_data(
            name,
            format!("{} bytes is too short for an IDX header", bytes.len()),
        ));
    }
    let got = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if got != magic {
        return Err(bad_data(
            name,
            format!(
                "magic number {got:#010x} is not {magic:#010x}, that of IDX {what} \
                 (unsigned bytes, {ndim} dimension(s))"
            ),
        ));
    }
    if bytes.len() < header {
        return Err(bad_data(
            name,
            format!(
                "truncated header: {} bytes, {header} needed for {ndim} dimensions",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad_data(name, format!("dimensions {dims:?} overflow")))?;
    let data = &bytes[header..];
    if data.len() != expected {
        let how = if data.len() < expected {
            "truncated"
        } else {
            "trailing bytes"
        };
        return Err(bad_data(
            name,
            format!(
                "{how}: dimensions {dims:?} need {expected} bytes of data, the file has {}",
                data.len()
            ),
        ));
    }
    Ok((dims, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small dataset of `n` images of 28x28 whose pixels encode their index.
    fn tiny(n: usize) -> FashionMnist {
        let images = (0..n * 784)
            .map(|k| ((k / 784) * 7 + k % 251) as u8)
            .collect();
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        FashionMnist {
            images,
            labels,
            rows: 28,
            cols: 28,
        }
    }

    fn err_string<T: std::fmt::Debug>(r: Result<T>) -> String {
        r.expect_err("expected an error").to_string()
    }

    #[test]
    fn idx_round_trip_in_memory_and_on_disk() {
        let ds = tiny(12);
        let (img, lab) = ds.to_idx_bytes().unwrap();
        assert_eq!(&img[..4], &[0, 0, 8, 3]);
        assert_eq!(&img[4..8], &[0, 0, 0, 12]);
        assert_eq!(&lab[..8], &[0, 0, 8, 1, 0, 0, 0, 12]);
        assert_eq!(FashionMnist::from_idx_bytes(&img, &lab).unwrap(), ds);

        for gzip in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            ds.save(dir.path(), Split::Test, gzip).unwrap();
            let name = if gzip {
                "t10k-images-idx3-ubyte.gz"
            } else {
                "t10k-images-idx3-ubyte"
            };
            assert!(dir.path().join(name).is_file());
            let back = FashionMnist::load(dir.path(), Split::Test).unwrap();
            assert_eq!(back, ds);
            assert_eq!(back.len(), 12);
            assert_eq!(back.image(3), ds.image(3));
            assert_eq!(back.label(3), 3);
            // The training files are not there.
            let e = err_string(FashionMnist::load(dir.path(), Split::Train));
            assert!(e.contains("train-images-idx3-ubyte[.gz]"), "{e}");
        }
    }

    #[test]
    fn uncompressed_file_is_preferred_to_gz() {
        let dir = tempfile::tempdir().unwrap();
        tiny(3).save(dir.path(), Split::Train, true).unwrap();
        tiny(5).save(dir.path(), Split::Train, false).unwrap();
        assert_eq!(
            FashionMnist::load(dir.path(), Split::Train).unwrap().len(),
            5
        );
    }

    #[test]
    fn missing_dataset_says_how_to_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = err_string(FashionMnist::load(dir.path(), Split::Train));
        assert!(e.contains("Fashion-MNIST not found in"), "{e}");
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
        assert!(e.contains("apt install dataset-fashion-mnist"), "{e}");
        assert!(e.contains("--data-dir"), "{e}");
    }

    #[test]
    fn wrong_magic_is_reported_with_the_file() {
        let (mut img, lab) = tiny(2).to_idx_bytes().unwrap();
        // Labels where images are expected.
        let e = err_string(FashionMnist::from_idx_bytes(&lab, &lab));
        assert!(e.contains("<images>") && e.contains("0x00000801"), "{e}");
        img[3] = 0x02;
        let e = err_string(FashionMnist::from_idx_bytes(&img, &lab));
        assert!(e.contains("magic number 0x00000802"), "{e}");

        // On disk, the message names the path.
        let dir = tempfile::tempdir().unwrap();
        let ds = tiny(2);
        ds.save(dir.path(), Split::Train, false).unwrap();
        let labels = dir.path().join("train-labels-idx1-ubyte");
        let mut bytes = std::fs::read(&labels).unwrap();
        bytes[2] = 0x0D; // float elements
        std::fs::write(&labels, bytes).unwrap();
        let e = err_string(FashionMnist::load(dir.path(), Split::Train));
        assert!(e.contains(&labels.display().to_string()), "{e}");
        assert!(e.contains("magic"), "{e}");
    }

    #[test]
    fn truncated_and_oversized_files_are_rejected() {
        let (img, lab) = tiny(2).to_idx_bytes().unwrap();
        let e = err_string(FashionMnist::from_idx_bytes(&img[..img.len() - 1], &lab));
        assert!(e.contains("truncated") && e.contains("1567"), "{e}");
        let e = err_string(FashionMnist::from_idx_bytes(&img[..10], &lab));
        assert!(e.contains("truncated header"), "{e}");
        let e = err_string(FashionMnist::from_idx_bytes(&img[..2], &lab));
        assert!(e.contains("too short"), "{e}");
        let e = err_string(FashionMnist::from_idx_bytes(&img, &lab[..9]));
        assert!(e.contains("<labels>") && e.contains("truncated"), "{e}");
        let mut long = lab.clone();
        long.push(0);
        let e = err_string(FashionMnist::from_idx_bytes(&img, &long));
        assert!(e.contains("trailing bytes"), "{e}");
        // Huge dimensions do not overflow or allocate.
        let mut huge = img.clone();
        huge[4..16].fill(0xff);
        let e = err_string(FashionMnist::from_idx_bytes(&huge, &lab));
        assert!(e.contains("need") || e.contains("overflow"), "{e}");

        // A corrupt gzip stream.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t10k-images-idx3-ubyte.gz");
        std::fs::write(&path, [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
        std::fs::write(dir.path().join("t10k-labels-idx1-ubyte"), &lab).unwrap();
        let e = err_string(FashionMnist::load(dir.path(), Split::Test));
        assert!(e.contains("gzip") && e.contains("t10k-images"), "{e}");
    }

    #[test]
    fn count_mismatch_and_bad_labels_are_rejected() {
        let (img, _) = tiny(3).to_idx_bytes().unwrap();
        let (_, lab) = tiny(2).to_idx_bytes().unwrap();
        let e = err_string(FashionMnist::from_idx_bytes(&img, &lab));
        assert!(e.contains("3 images") && e.contains("2 labels"), "{e}");

        let (img, mut lab) = tiny(3).to_idx_bytes().unwrap();
        lab[9] = 10;
        let e = err_string(FashionMnist::from_idx_bytes(&img, &lab));
        assert!(e.contains("label 10 at index 1"), "{e}");

        let mut empty = img.clone();
        empty[8..12].copy_from_slice(&0u32.to_be_bytes());
        let e = err_string(FashionMnist::from_idx_bytes(&empty[..16], &lab));
        assert!(e.contains("0x28 pixels"), "{e}");
    }

    #[test]
    fn batch_normalises_and_checks_indices() {
        let mut ds = tiny(4);
        ds.images[784] = 255; // image 1, pixel 0
        ds.images[785] = 0;
        let b = ds.batch(&[1, 3], None, 0).unwrap();
        assert_eq!(b.shape, [2, 1, 28, 28]);
        assert_eq!(b.len(), 2);
        assert_eq!(b.labels, vec![1, 3]);
        assert_eq!(b.pixels.len(), 2 * 784);
        assert!((b.pixels[0] - (1.0 - MEAN) / STD).abs() < 1e-6);
        assert!((b.pixels[1] - (-MEAN / STD)).abs() < 1e-6);
        let e = err_string(ds.batch(&[0, 4], None, 0));
        assert!(e.contains("index 4") && e.contains("size 4"), "{e}");
        let device = glimpse_cpu::device();
        assert_eq!(b.pixels_tensor(&device).unwrap().dims(), &[2, 1, 28, 28]);
        assert_eq!(b.labels_tensor(&device).unwrap().dims(), &[2]);
    }

    #[test]
    fn augmentation_is_deterministic_per_sample() {
        let ds = tiny(16);
        let aug = Augment::new(42);
        let indices: Vec<usize> = (0..16).collect();
        let a = ds.batch(&indices, Some(&aug), 3).unwrap();
        let again = ds.batch(&indices, Some(&aug), 3).unwrap();
        assert_eq!(a, again);
        // A sample's augmentation does not depend on its batch.
        let alone = ds.batch(&[5], Some(&aug), 3).unwrap();
        assert_eq!(alone.pixels, a.pixels[5 * 784..6 * 784]);
        // Another epoch or seed augments differently, and differs from no augmentation.
        let other_epoch = ds.batch(&indices, Some(&aug), 4).unwrap();
        assert_ne!(a.pixels, other_epoch.pixels);
        let other_seed = ds.batch(&indices, Some(&Augment::new(43)), 3).unwrap();
        assert_ne!(a.pixels, other_seed.pixels);
        let plain = ds.batch(&indices, None, 3).unwrap();
        assert_ne!(a.pixels, plain.pixels);
        assert_eq!(a.labels, plain.labels);
        // Shifted-in pixels are the background, 0 before normalisation.
        let background = -MEAN / STD;
        for (i, &idx) in indices.iter().enumerate() {
            let p = aug.params(3, idx);
            if p.dy > 0 {
                let row0 = &a.pixels[i * 784..i * 784 + 28];
                assert!(row0.iter().all(|&v| v == background));
            }
        }
    }

    /// Reads the real dataset when Debian's package is installed; says it skipped otherwise
    /// (`GLIMPSE_REQUIRE_FASHION_MNIST=1`, set by CI, makes a missing dataset a failure).
    #[test]
    fn real_dataset_when_installed() {
        if !Path::new(DEFAULT_DIR).is_dir() {
            assert!(
                std::env::var("GLIMPSE_REQUIRE_FASHION_MNIST").as_deref() != Ok("1"),
                "{DEFAULT_DIR} does not exist: apt install dataset-fashion-mnist"
            );
            eprintln!("skipped: {DEFAULT_DIR} does not exist");
            return;
        }
        let train = FashionMnist::load(DEFAULT_DIR, Split::Train).unwrap();
        let test = FashionMnist::load(DEFAULT_DIR, Split::Test).unwrap();
        assert_eq!((train.len(), test.len()), (60_000, 10_000));
        assert_eq!((train.rows, train.cols), (28, 28));
        let mut counts = [0usize; NUM_CLASSES];
        for &l in &train.labels {
            counts[usize::from(l)] += 1;
        }
        assert_eq!(counts, [6000; NUM_CLASSES]);
        assert!(test.labels.iter().all(|&l| usize::from(l) < NUM_CLASSES));
        // The published normalisation constants match the training pixels.
        let sum: u64 = train.images.iter().map(|&p| u64::from(p)).sum();
        let mean = sum as f64 / train.images.len() as f64 / 255.0;
        assert!((mean - f64::from(MEAN)).abs() < 1e-3, "mean {mean}");
    }
}
