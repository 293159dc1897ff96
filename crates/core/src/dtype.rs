use crate::{Error, Result};

/// A tensor element type: plain floats/ints and every ggml block-quantized type.
///
/// The numeric ids are the `ggml_type` values GGUF files store.
#[allow(non_camel_case_types, missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I8,
    I16,
    I32,
    I64,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    IQ1_M,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

/// (type, ggml id, name, elements per block, bytes per block)
const TABLE: &[(DType, u32, &str, usize, usize)] = &[
    (DType::F32, 0, "F32", 1, 4),
    (DType::F16, 1, "F16", 1, 2),
    (DType::Q4_0, 2, "Q4_0", 32, 18),
    (DType::Q4_1, 3, "Q4_1", 32, 20),
    (DType::Q5_0, 6, "Q5_0", 32, 22),
    (DType::Q5_1, 7, "Q5_1", 32, 24),
    (DType::Q8_0, 8, "Q8_0", 32, 34),
    (DType::Q8_1, 9, "Q8_1", 32, 36),
    (DType::Q2_K, 10, "Q2_K", 256, 84),
    (DType::Q3_K, 11, "Q3_K", 256, 110),
    (DType::Q4_K, 12, "Q4_K", 256, 144),
    (DType::Q5_K, 13, "Q5_K", 256, 176),
    (DType::Q6_K, 14, "Q6_K", 256, 210),
    (DType::Q8_K, 15, "Q8_K", 256, 292),
    (DType::IQ2_XXS, 16, "IQ2_XXS", 256, 66),
    (DType::IQ2_XS, 17, "IQ2_XS", 256, 74),
    (DType::IQ3_XXS, 18, "IQ3_XXS", 256, 98),
    (DType::IQ1_S, 19, "IQ1_S", 256, 50),
    (DType::IQ4_NL, 20, "IQ4_NL", 32, 18),
    (DType::IQ3_S, 21, "IQ3_S", 256, 110),
    (DType::IQ2_S, 22, "IQ2_S", 256, 82),
    (DType::IQ4_XS, 23, "IQ4_XS", 256, 136),
    (DType::I8, 24, "I8", 1, 1),
    (DType::I16, 25, "I16", 1, 2),
    (DType::I32, 26, "I32", 1, 4),
    (DType::I64, 27, "I64", 1, 8),
    (DType::F64, 28, "F64", 1, 8),
    (DType::IQ1_M, 29, "IQ1_M", 256, 56),
    (DType::BF16, 30, "BF16", 1, 2),
    (DType::TQ1_0, 34, "TQ1_0", 256, 54),
    (DType::TQ2_0, 35, "TQ2_0", 256, 66),
    (DType::MXFP4, 39, "MXFP4", 32, 17),
];

impl DType {
    fn row(self) -> &'static (DType, u32, &'static str, usize, usize) {
        TABLE
            .iter()
            .find(|r| r.0 == self)
            .expect("every DType is in TABLE")
    }

    /// All types, in ggml id order.
    pub fn all() -> impl Iterator<Item = DType> {
        TABLE.iter().map(|r| r.0)
    }

    /// The type with ggml id `id`.
    pub fn from_ggml(id: u32) -> Result<DType> {
        TABLE
            .iter()
            .find(|r| r.1 == id)
            .map(|r| r.0)
            .ok_or_else(|| Error::Unsupported(format!("ggml tensor type id {id}")))
    }

    /// The ggml id of this type.
    pub fn ggml_id(self) -> u32 {
        self.row().1
    }

    /// The name ggml uses for this type (`Q4_K`, `F16`, ...).
    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// Look a type up by its ggml name, case-insensitively.
    pub fn from_name(name: &str) -> Option<DType> {
        TABLE
            .iter()
            .find(|r| r.2.eq_ignore_ascii_case(name))
            .map(|r| r.0)
    }

    /// Elements in one block (1 for plain types).
    pub fn block_size(self) -> usize {
        self.row().3
    }

    /// Bytes in one block.
    pub fn type_size(self) -> usize {
        self.row().4
    }

    /// Whether this is a block-quantized type.
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes needed for a row of `n` elements, or an error when `n` is not a whole
    /// number of blocks.
    pub fn row_bytes(self, n: usize) -> Result<usize> {
        let bs = self.block_size();
        if n % bs != 0 {
            return Err(Error::Format(format!(
                "a row of {n} elements is not a multiple of {}'s block size {bs}",
                self.name()
            )));
        }
        (n / bs)
            .checked_mul(self.type_size())
            .ok_or_else(|| Error::Format("tensor size overflows".into()))
    }

    /// Bytes for a tensor of `n_elements` (must be whole blocks).
    pub fn bytes_for(self, n_elements: u64) -> Result<u64> {
        let bs = self.block_size() as u64;
        if n_elements % bs != 0 {
            return Err(Error::Format(format!(
                "{n_elements} elements is not a multiple of {}'s block size {bs}",
                self.name()
            )));
        }
        (n_elements / bs)
            .checked_mul(self.type_size() as u64)
            .ok_or_else(|| Error::Format("tensor size overflows".into()))
    }

    /// Bits per weight.
    pub fn bits_per_weight(self) -> f64 {
        self.type_size() as f64 * 8.0 / self.block_size() as f64
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
