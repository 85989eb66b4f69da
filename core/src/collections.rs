//! Capacity profiles: the stores are written once over [`Seq`], and a [`Profile`] picks fixed
//! (`heapless`, no heap) or growable (`alloc`) collections for them.
//!
//! Running out of a fixed capacity is a [`CapacityError`], never a panic or a silent drop.

use core::fmt::Debug;

/// A collection ran out of its fixed capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CapacityError {
    /// What was full: a store's table or a byte string.
    pub what: &'static str,
}

impl core::fmt::Display for CapacityError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "capacity exhausted: {}", self.what)
    }
}

impl core::error::Error for CapacityError {}

/// An ordered sequence with a possibly fixed capacity.
///
/// Implemented for `heapless::Vec<T, N>` and (feature `alloc`) `alloc::vec::Vec<T>`.
pub trait Seq<T>: Default + Clone + PartialEq + Debug + sealed::Sealed {
    /// The elements, in order.
    fn as_slice(&self) -> &[T];
    /// The elements, mutably.
    fn as_mut_slice(&mut self) -> &mut [T];
    /// Inserts `value` at `index` (`index <= len`), or gives it back when full.
    fn try_insert(&mut self, index: usize, value: T) -> Result<(), T>;
    /// Removes and returns the element at `index`, if there is one.
    fn remove_at(&mut self, index: usize) -> Option<T>;
    /// Keeps the elements for which `keep` returns true.
    fn retain_by(&mut self, keep: impl FnMut(&T) -> bool);
    /// Removes every element.
    fn clear_all(&mut self);

    /// Appends `value`, or gives it back when full.
    fn try_push(&mut self, value: T) -> Result<(), T> {
        let len = self.as_slice().len();
        self.try_insert(len, value)
    }
    /// Number of elements.
    fn len(&self) -> usize {
        self.as_slice().len()
    }
    /// Whether there is no element.
    fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

mod sealed {
    pub trait Sealed {}
    impl<T, const N: usize> Sealed for heapless::Vec<T, N> {}
    #[cfg(feature = "alloc")]
    impl<T> Sealed for alloc::vec::Vec<T> {}
}

impl<T: Clone + PartialEq + Debug, const N: usize> Seq<T> for heapless::Vec<T, N> {
    fn as_slice(&self) -> &[T] {
        self
    }
    fn as_mut_slice(&mut self) -> &mut [T] {
        self
    }
    fn try_insert(&mut self, index: usize, value: T) -> Result<(), T> {
        if index > self.len() {
            return Err(value);
        }
        self.insert(index, value)
    }
    fn remove_at(&mut self, index: usize) -> Option<T> {
        (index < self.len()).then(|| self.remove(index))
    }
    fn retain_by(&mut self, keep: impl FnMut(&T) -> bool) {
        self.retain(keep)
    }
    fn clear_all(&mut self) {
        self.clear()
    }
}

#[cfg(feature = "alloc")]
impl<T: Clone + PartialEq + Debug> Seq<T> for alloc::vec::Vec<T> {
    fn as_slice(&self) -> &[T] {
        self
    }
    fn as_mut_slice(&mut self) -> &mut [T] {
        self
    }
    fn try_insert(&mut self, index: usize, value: T) -> Result<(), T> {
        if index > self.len() {
            return Err(value);
        }
        self.insert(index, value);
        Ok(())
    }
    fn remove_at(&mut self, index: usize) -> Option<T> {
        (index < self.len()).then(|| self.remove(index))
    }
    fn retain_by(&mut self, keep: impl FnMut(&T) -> bool) {
        self.retain(keep)
    }
    fn clear_all(&mut self) {
        self.clear()
    }
}

/// Chooses the collections the stores are built from.
///
/// Use [`Fixed`] on devices (capacities fixed at compile time) and `Growable` (feature
/// `alloc`) on hosts.
pub trait Profile: 'static + Clone + Copy + PartialEq + Eq + core::fmt::Debug + Default {
    /// Byte strings: keys, values, names.
    type Bytes: Seq<u8> + Ord;
    /// Tables of the stores.
    type Vec<T: Clone + PartialEq + Debug>: Seq<T>;
}

/// Fixed capacities: every table holds at most `N` entries and every byte string at most `B`
/// bytes. No heap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fixed<const N: usize, const B: usize>;

impl<const N: usize, const B: usize> Profile for Fixed<N, B> {
    type Bytes = heapless::Vec<u8, B>;
    type Vec<T: Clone + PartialEq + Debug> = heapless::Vec<T, N>;
}

/// Growable collections on the heap, for hosts.
#[cfg(feature = "alloc")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Growable;

#[cfg(feature = "alloc")]
impl Profile for Growable {
    type Bytes = alloc::vec::Vec<u8>;
    type Vec<T: Clone + PartialEq + Debug> = alloc::vec::Vec<T>;
}
