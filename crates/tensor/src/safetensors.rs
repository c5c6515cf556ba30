//! Loading and saving safetensors files.
