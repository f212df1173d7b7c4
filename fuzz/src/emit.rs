//! Writing fuzz inputs: the bytes from which `arbitrary` (1.x) rebuilds a given value, so that
//! seed inputs can be written as values (`examples/seeds.rs`). Integers are little-endian,
//! `bool` is one byte, `Option` a `bool` then the value, a `Vec` each element after a `1` byte
//! and a `0` byte at the end, an enum the `u32` that selects its variant, then its fields.
//! [`check`] parses the bytes back, so a change in `arbitrary`'s format is caught. The input
//! types are declared with `input!`, which writes their [`Emit`] impl from the same definition.

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

/// Declares a fuzz input type and its [`Emit`] impl from the one definition, so that the two
/// cannot drift apart: a struct emits its fields in order; an enum the selector of the variant
/// (by position, out of all the variants, as the derive counts them) and then its fields. Tuple
/// variants may have up to four fields. Attributes (`#[derive(Arbitrary, ...)]`, docs) pass
/// through unchanged.
macro_rules! input {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $fty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field : $fty ),*
        }

        impl $crate::emit::Emit for $name {
            fn emit(&self, out: &mut Vec<u8>) {
                $( $crate::emit::Emit::emit(&self.$field, out); )*
            }
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$vmeta:meta])*
                $variant:ident
                $( ( $($tty:ty),* $(,)? ) )?
                $( { $( $(#[$fmeta:meta])* $field:ident : $fty:ty ),* $(,)? } )?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $(
                $(#[$vmeta])*
                $variant
                $( ( $($tty),* ) )?
                $( { $( $(#[$fmeta])* $field : $fty ),* } )?
            ),*
        }

        impl $crate::emit::Emit for $name {
            #[allow(unused_assignments)] // the index after the last variant
            fn emit(&self, out: &mut Vec<u8>) {
                let count = [$(stringify!($variant)),*].len() as u32;
                let mut index = 0;
                $(
                    $crate::emit::input!(
                        @arm self out index count $variant $( ( $($tty),* ) )? $( { $($field),* } )?
                    );
                    index += 1;
                )*
                unreachable!("every variant returns")
            }
        }
    };
    // One variant: if `$s` is it, its selector and fields, then return.
    (@arm $s:ident $out:ident $i:ident $n:ident $v:ident) => {
        if let Self::$v = $s {
            return $crate::emit::variant($out, $i, $n);
        }
    };
    (@arm $s:ident $out:ident $i:ident $n:ident $v:ident { $($f:ident),* }) => {
        if let Self::$v { $($f),* } = $s {
            $crate::emit::variant($out, $i, $n);
            $( $crate::emit::Emit::emit($f, $out); )*
            return;
        }
    };
    (@arm $s:ident $out:ident $i:ident $n:ident $v:ident ($a:ty)) => {
        $crate::emit::input!(@tuple $s $out $i $n $v (a));
    };
    (@arm $s:ident $out:ident $i:ident $n:ident $v:ident ($a:ty, $b:ty)) => {
        $crate::emit::input!(@tuple $s $out $i $n $v (a, b));
    };
    (@arm $s:ident $out:ident $i:ident $n:ident $v:ident ($a:ty, $b:ty, $c:ty)) => {
        $crate::emit::input!(@tuple $s $out $i $n $v (a, b, c));
    };
    (@arm $s:ident $out:ident $i:ident $n:ident $v:ident ($a:ty, $b:ty, $c:ty, $d:ty)) => {
        $crate::emit::input!(@tuple $s $out $i $n $v (a, b, c, d));
    };
    (@tuple $s:ident $out:ident $i:ident $n:ident $v:ident ($($f:ident),*)) => {
        if let Self::$v($($f),*) = $s {
            $crate::emit::variant($out, $i, $n);
            $( $crate::emit::Emit::emit($f, $out); )*
            return;
        }
    };
}

pub(crate) use input;

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
