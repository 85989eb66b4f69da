//! Alarms raised by members (etcd's `v3alarm.AlarmStore`): NOSPACE and CORRUPT.

use super::{StoreError, codec};
use crate::backend::{Backend, Bucket, ReadTxn, WriteTxn};
use crate::collections::{Profile, Seq};

/// The kind of an alarm (etcd's `AlarmType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AlarmType {
    /// The member ran out of backend space.
    Nospace = 1,
    /// The member found its data corrupted.
    Corrupt = 2,
}

impl AlarmType {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(AlarmType::Nospace),
            2 => Some(AlarmType::Corrupt),
            _ => None,
        }
    }
}

/// An alarm raised by a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Alarm {
    /// The member that raised it.
    pub member: u64,
    /// What it is.
    pub kind: AlarmType,
}

impl Alarm {
    /// The key of the alarm in the `alarm` bucket ([`super::records::alarm_key`]).
    fn key(&self) -> [u8; 9] {
        super::records::alarm_key(self)
    }

    fn from_key(k: &[u8]) -> Option<Self> {
        let member = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
        let kind = AlarmType::from_u8(*k.get(8)?)?;
        (k.len() == 9).then_some(Alarm { member, kind })
    }
}

/// The alarm store.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct AlarmStore<P: Profile> {
    alarms: P::Alarms,
}

impl<P: Profile> AlarmStore<P> {
    /// Every active alarm, by member then kind.
    pub fn alarms(&self) -> &[Alarm] {
        self.alarms.as_slice()
    }

    /// Whether an alarm of `kind` is active for any member: etcd switches its applier to the
    /// capped (NOSPACE) or corrupt (CORRUPT) one when such an alarm is raised or restored.
    pub fn is_active(&self, kind: AlarmType) -> bool {
        self.alarms.as_slice().iter().any(|a| a.kind == kind)
    }

    /// Raises `alarm`; returns whether it was new.
    pub(crate) fn activate<W: WriteTxn + ?Sized>(&mut self, txn: &mut W, alarm: Alarm) -> Result<bool, StoreError> {
        if codec::find(self.alarms.as_slice(), &alarm, |a| a).is_some() {
            return Ok(false);
        }
        txn.put(Bucket::Alarm, &alarm.key(), &[])?;
        codec::upsert(&mut self.alarms, alarm, |a| a, "alarms")?;
        Ok(true)
    }

    /// Clears `alarm`; returns whether it was active.
    pub(crate) fn deactivate<W: WriteTxn + ?Sized>(&mut self, txn: &mut W, alarm: Alarm) -> Result<bool, StoreError> {
        if !codec::remove(&mut self.alarms, &alarm, |a| a) {
            return Ok(false);
        }
        txn.delete(Bucket::Alarm, &alarm.key())?;
        Ok(true)
    }

    /// Rebuilds the alarms from the `alarm` bucket (etcd's `restoreAlarms`).
    pub fn recover<B: Backend>(backend: &B) -> Result<Self, StoreError> {
        Self::load(&backend.read()?)
    }

    /// Reads the store from a read transaction.
    pub(crate) fn load<R: ReadTxn + ?Sized>(txn: &R) -> Result<Self, StoreError> {
        let mut store = AlarmStore::<P>::default();
        store.load_into(txn)?;
        Ok(store)
    }

    /// Reads the store from a read transaction in place (cleared first).
    pub(crate) fn load_into<R: ReadTxn + ?Sized>(&mut self, txn: &R) -> Result<(), StoreError> {
        self.alarms.clear_all();
        let alarms = &mut self.alarms;
        codec::scan(txn, Bucket::Alarm, |k, _| match Alarm::from_key(k) {
            Some(alarm) => codec::upsert(alarms, alarm, |a| a, "alarms").map_err(Into::into),
            None => Err(StoreError::Corrupt { bucket: Bucket::Alarm, what: "malformed alarm key" }),
        })
    }
}
