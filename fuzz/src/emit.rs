//! Writing fuzz inputs: the bytes from which `arbitrary` (1.x) rebuilds a given value, so that
//! seed inputs can be written as values (`examples/seeds.rs`). Integers are little-endian,
//! `bool` is one byte, `Option` a `bool` then the value, a `Vec` each element after a `1` byte
//! and a `0` byte at the end, an enum the `u32` that selects its variant, then its fields.
//! [`check`] parses the bytes back, so a change in `arbitrary`'s format is caught.

use arbitrary::{Arbitrary, Unstructured};

/// A value that can be written as the input `arbitrary` reads it back from.
pub trait Emit {
    /// Appends the bytes.
    fn emit(&self, out: &mut Vec<u8>);
}

macro_rules! ints {
    ($($t:ty)*) => {$(
        impl Emit for $t {
            fn emit(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}

ints!(u8 u16 u32 u64 i8 i16 i32 i64);

impl Emit for bool {
    fn emit(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl<T: Emit> Emit for Option<T> {
    fn emit(&self, out: &mut Vec<u8>) {
        self.is_some().emit(out);
        if let Some(v) = self {
            v.emit(out);
        }
    }
}

impl<T: Emit> Emit for Vec<T> {
    fn emit(&self, out: &mut Vec<u8>) {
        for v in self {
            out.push(1);
            v.emit(out);
        }
        out.push(0);
    }
}

impl<const N: usize> Emit for [u8; N] {
    fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl<T: Emit + ?Sized> Emit for &T {
    fn emit(&self, out: &mut Vec<u8>) {
        (**self).emit(out);
    }
}

impl<A: Emit, B: Emit> Emit for (A, B) {
    fn emit(&self, out: &mut Vec<u8>) {
        self.0.emit(out);
        self.1.emit(out);
    }
}

impl<A: Emit, B: Emit, C: Emit> Emit for (A, B, C) {
    fn emit(&self, out: &mut Vec<u8>) {
        self.0.emit(out);
        self.1.emit(out);
        self.2.emit(out);
    }
}

/// Writes the selector of variant `index` of an enum with `count` variants (the derive picks
/// `(u64::from(x) * count) >> 32`).
pub fn variant(out: &mut Vec<u8>, index: u32, count: u32) {
    let x = ((u64::from(index) << 32).div_ceil(u64::from(count))) as u32;
    debug_assert_eq!((u64::from(x) * u64::from(count)) >> 32, u64::from(index));
    x.emit(out);
}

/// The input for `value`, after checking that `arbitrary` reads back the same value (compared
/// through `Debug`).
pub fn check<T>(value: &T) -> Vec<u8>
where
    T: Emit + core::fmt::Debug + for<'a> Arbitrary<'a>,
{
    let mut out = Vec::new();
    value.emit(&mut out);
    let back = T::arbitrary_take_rest(Unstructured::new(&out)).expect("parses back");
    assert_eq!(format!("{back:?}"), format!("{value:?}"), "arbitrary reads back another value");
    out
}
