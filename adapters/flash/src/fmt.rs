//! The crate's one logging shim: `defmt` on embedded, `log` on hosts, nothing by default.
//!
//! The same shape as the core's: the core's shim is private to it, so the adapter keeps its own
//! copy and the choice of logger is still made by one pair of features.
#![allow(unused_macros)]

#[cfg(all(feature = "defmt", feature = "log"))]
compile_error!("enable at most one of the features `defmt` and `log`");

macro_rules! info {
    ($s:literal $(, $x:expr)* $(,)?) => {{
        #[cfg(feature = "defmt")]
        ::defmt::info!($s $(, $x)*);
        #[cfg(feature = "log")]
        ::log::info!($s $(, $x)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        let _ = ($(&$x),*);
    }};
}

macro_rules! warning {
    ($s:literal $(, $x:expr)* $(,)?) => {{
        #[cfg(feature = "defmt")]
        ::defmt::warn!($s $(, $x)*);
        #[cfg(feature = "log")]
        ::log::warn!($s $(, $x)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        let _ = ($(&$x),*);
    }};
}

#[allow(unused_imports)]
pub(crate) use info;
#[allow(unused_imports)]
pub(crate) use warning;
