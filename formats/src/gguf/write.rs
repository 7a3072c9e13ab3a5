//! GGUF writer. SKELETON.

/// Writes a GGUF file.
pub struct GgufWriter;
/// Writes the tensor data section of a GGUF file after its header.
pub struct TensorDataWriter;
