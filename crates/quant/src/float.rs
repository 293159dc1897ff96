//! Plain element types viewed as one-element "blocks".
use crate::{Block, assert_block_size, f16le};

macro_rules! plain {
    ($name:ident, $n:expr, $doc:expr, |$b:ident| $conv:expr) => {
        #[doc = $doc]
        #[repr(C)]
        #[derive(Clone, Copy)]
        pub struct $name(pub [u8; $n]);
        assert_block_size!($name, $n);
        impl Block for $name {
            const N: usize = 1;
            #[inline(always)]
            fn dequant(&self, out: &mut [f32]) {
                let $b = self.0;
                out[0] = $conv;
            }
        }
    };
}

plain!(F32, 4, "IEEE single.", |b| f32::from_le_bytes(b));
plain!(F16, 2, "IEEE half.", |b| f16le(b));
plain!(BF16, 2, "bfloat16: the top half of an f32.", |b| {
    f32::from_bits((u16::from_le_bytes(b) as u32) << 16)
});
plain!(F64, 8, "IEEE double.", |b| f64::from_le_bytes(b) as f32);
plain!(I8, 1, "int8.", |b| b[0] as i8 as f32);
plain!(I16, 2, "int16.", |b| i16::from_le_bytes(b) as f32);
plain!(I32, 4, "int32.", |b| i32::from_le_bytes(b) as f32);
plain!(I64, 8, "int64.", |b| i64::from_le_bytes(b) as f32);
