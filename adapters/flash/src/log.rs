//! The on-flash log of an area: frame headers, area headers, commit records, the scan that
//! finds committed transactions, and the sorted index of live records it builds.
//!
//! `sequential-storage` was the first choice for this layer and falls short of it (see the
//! comment at the top of `lib.rs`): no multi-item transaction committed by one write, no
//! two-area atomic swap, no ordered scan from a key, no bucket clear, removal only on
//! `MultiwriteNorFlash`, and its item framing is private. So the framing is hand-written,
//! small, and specified in FORMAT.md.

use core::cell::RefCell;
use core::cmp::Ordering;

use embedded_storage::nor_flash::NorFlash;
use heapless::vec::VecView;
use snapply_core::backend::Bucket;

use crate::chip::{self, AREA_RECORD, COMMIT_SLOTS, FRAME_HEADER, Geometry, Result, round_up};
use crate::error::FlashError;

/// CRC-32C (Castagnoli), the checksum of the image format too.
pub(crate) static CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// A put: bucket, key, value.
pub(crate) const K_PUT: u8 = 0x50;
/// A delete: bucket, key.
pub(crate) const K_DELETE: u8 = 0x44;
/// A bucket clear.
pub(crate) const K_CLEAR: u8 = 0x43;
/// The start of a transaction.
pub(crate) const K_BEGIN: u8 = 0x42;
/// The end of a transaction; the value-length field holds the transaction's CRC.
pub(crate) const K_COMMIT: u8 = 0x54;
/// The persisted snapshot's metadata and image digest.
pub(crate) const K_SNAP: u8 = 0x53;
/// A chunk of the snapshot's v2 data.
pub(crate) const K_V2: u8 = 0x56;

const AREA_MAGIC: [u8; 4] = *b"SNPA";
const COMMIT_MAGIC: [u8; 4] = *b"SNPC";
/// The layout version this crate writes and reads.
pub(crate) const LAYOUT_VERSION: u8 = 1;

/// What an area was written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AreaKind {
    /// The first area of a blank flash.
    Format = 1,
    /// A persisted snapshot.
    Snapshot = 2,
    /// The live state, compacted out of the other area.
    Compaction = 3,
}

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: u8,
    pub(crate) bucket: u8,
    pub(crate) klen: u16,
    pub(crate) vlen: u32,
}

/// What the bytes at a frame position are.
pub(crate) enum Slot {
    /// All `0xFF`: the end of the log.
    Erased,
    /// Not a valid header: a write cut short. Nothing after it in the same header slot.
    Torn,
    /// A header whose CRC holds.
    Valid(Header),
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; FRAME_HEADER] {
        let mut b = [0u8; FRAME_HEADER];
        b[0] = self.kind;
        b[1] = self.bucket;
        b[2..4].copy_from_slice(&self.klen.to_le_bytes());
        b[4..8].copy_from_slice(&self.vlen.to_le_bytes());
        let crc = CRC.checksum(&b[..8]);
        b[8..12].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8; FRAME_HEADER]) -> Slot {
        if b.iter().all(|x| *x == 0xFF) {
            return Slot::Erased;
        }
        let [k, bucket, k0, k1, v0, v1, v2, v3, c0, c1, c2, c3] = *b;
        if CRC.checksum(&[k, bucket, k0, k1, v0, v1, v2, v3]) != u32::from_le_bytes([c0, c1, c2, c3]) {
            return Slot::Torn;
        }
        Slot::Valid(Header {
            kind: k,
            bucket,
            klen: u16::from_le_bytes([k0, k1]),
            vlen: u32::from_le_bytes([v0, v1, v2, v3]),
        })
    }

    /// Bytes of payload after the header (before padding).
    pub(crate) fn payload_len(&self) -> u32 {
        match self.kind {
            K_BEGIN | K_COMMIT => 0,
            _ => u32::from(self.klen).saturating_add(self.vlen),
        }
    }
}

/// The valid header of an area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AreaHeader {
    pub(crate) kind: AreaKind,
    pub(crate) epoch: u32,
}

/// What the first bytes of an area say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AreaState {
    pub(crate) id: u8,
    pub(crate) header: Option<AreaHeader>,
    /// A commit record is written and names the header's epoch.
    pub(crate) activated: bool,
    /// The first commit-record slot still erased, if any.
    pub(crate) free_slot: Option<u32>,
}

fn record(magic: [u8; 4], a: u8, b: u8, epoch: u32) -> [u8; AREA_RECORD] {
    let mut r = [0u8; AREA_RECORD];
    r[..4].copy_from_slice(&magic);
    r[4] = a;
    r[5] = b;
    r[8..12].copy_from_slice(&epoch.to_le_bytes());
    let crc = CRC.checksum(&r[..12]);
    r[12..16].copy_from_slice(&crc.to_le_bytes());
    r
}

fn parse_record(r: &[u8; AREA_RECORD], magic: [u8; 4]) -> Option<(u8, u8, u32)> {
    let [m0, m1, m2, m3, a, b, z0, z1, e0, e1, e2, e3, c0, c1, c2, c3] = *r;
    let ok = [m0, m1, m2, m3] == magic
        && z0 == 0
        && z1 == 0
        && CRC.checksum(&[m0, m1, m2, m3, a, b, z0, z1, e0, e1, e2, e3]) == u32::from_le_bytes([c0, c1, c2, c3]);
    ok.then_some((a, b, u32::from_le_bytes([e0, e1, e2, e3])))
}

/// Reads the header and commit record of `area`.
pub(crate) fn area_state<F: NorFlash>(flash: &RefCell<F>, geo: &Geometry, area: u8) -> Result<AreaState, F> {
    let base = geo.base(area);
    let mut h = [0u8; AREA_RECORD];
    chip::read(flash, base, &mut h)?;
    let header = parse_record(&h, AREA_MAGIC).and_then(|(version, kind, epoch)| {
        let kind = match kind {
            1 => AreaKind::Format,
            2 => AreaKind::Snapshot,
            3 => AreaKind::Compaction,
            _ => return None,
        };
        (version == LAYOUT_VERSION).then_some(AreaHeader { kind, epoch })
    });
    let mut activated = false;
    let mut free_slot = None;
    for slot in 1..=COMMIT_SLOTS {
        let mut c = [0u8; AREA_RECORD];
        let at = base + geo.record * slot;
        chip::read(flash, at, &mut c)?;
        if c.iter().all(|b| *b == 0xFF) {
            free_slot = free_slot.or(Some(at));
        } else if let (Some(h), Some((_, _, epoch))) = (header, parse_record(&c, COMMIT_MAGIC)) {
            activated |= epoch == h.epoch;
        }
    }
    Ok(AreaState { id: area, header, activated, free_slot })
}

/// Erases `area` and writes its header: the area is then empty and not activated.
pub(crate) fn format_area<F: NorFlash>(
    flash: &RefCell<F>,
    geo: &Geometry,
    area: u8,
    kind: AreaKind,
    epoch: u32,
) -> Result<(), F> {
    let base = geo.base(area);
    chip::erase(flash, base, base + geo.area_len)?;
    chip::write_small(flash, base, &record(AREA_MAGIC, LAYOUT_VERSION, kind as u8, epoch), geo.record)
}

/// Writes the commit record of `area` into its first free slot: the one small write that makes
/// it the committed area. A freshly formatted area has every slot free.
pub(crate) fn activate<F: NorFlash>(flash: &RefCell<F>, geo: &Geometry, area: u8, epoch: u32) -> Result<(), F> {
    let state = area_state(flash, geo, area)?;
    let at = state.free_slot.ok_or(FlashError::Full("every commit-record slot of the area was spent by cut writes"))?;
    chip::write_small(flash, at, &record(COMMIT_MAGIC, 0, 0, epoch), geo.record)
}

/// Reads the frame header at `pos`.
pub(crate) fn header_at<F: NorFlash>(flash: &RefCell<F>, pos: u32) -> Result<Slot, F> {
    let mut h = [0u8; FRAME_HEADER];
    chip::read(flash, pos, &mut h)?;
    Ok(Header::decode(&h))
}

/// Reads the frame header at `pos`, which the index or a committed transaction says is valid.
pub(crate) fn valid_header_at<F: NorFlash>(flash: &RefCell<F>, pos: u32) -> Result<Header, F> {
    match header_at(flash, pos)? {
        Slot::Valid(h) => Ok(h),
        _ => Err(FlashError::Corrupt { offset: pos, what: "a committed frame header no longer checks" }),
    }
}

/// The position after the frame at `pos` with header `h`.
pub(crate) fn next_frame<E>(geo: &Geometry, pos: u32, h: &Header) -> core::result::Result<u32, FlashError<E>> {
    round_up(h.payload_len(), geo.align)
        .and_then(|p| pos.checked_add(geo.header)?.checked_add(p))
        .ok_or(FlashError::Corrupt { offset: pos, what: "frame length overflows" })
}

/// Where the persisted snapshot's own frames are in an area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SnapInfo {
    /// The `K_SNAP` frame.
    pub(crate) frame: u32,
    /// The first `K_V2` frame, if any.
    pub(crate) v2_first: Option<u32>,
    /// Total bytes of v2 data.
    pub(crate) v2_len: u32,
}

/// What a scan of an area found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Scanned {
    /// Where the next frame goes.
    pub(crate) tail: u32,
    /// The snapshot frames of a committed transaction, if any.
    pub(crate) snap: Option<SnapInfo>,
    /// Committed transactions found.
    pub(crate) txns: u32,
    /// A torn header or an uncommitted transaction was skipped.
    pub(crate) torn: bool,
}

/// Scans the log of the area at `base`. With an `index`, replays every committed transaction
/// into it; with `first_only`, stops after the first committed transaction.
///
/// Every frame of a transaction is read in full to check the transaction's CRC before any of
/// it is applied, so a torn or flipped byte anywhere in a transaction discards all of it.
pub(crate) fn scan<F: NorFlash>(
    flash: &RefCell<F>,
    geo: &Geometry,
    base: u32,
    mut index: Option<&mut VecView<u32>>,
    key_buf: &mut [u8],
    first_only: bool,
) -> Result<Scanned, F> {
    let end = base + geo.area_len;
    let mut pos = base + geo.log_start;
    let mut out = Scanned { tail: pos, snap: None, txns: 0, torn: false };
    let mut txn: Option<(u32, crc::Digest<'static, u32>)> = None;
    let mut chunk = [0u8; 64];
    loop {
        if pos.checked_add(geo.header).is_none_or(|h| h > end) {
            break;
        }
        let mut raw = [0u8; FRAME_HEADER];
        chip::read(flash, pos, &mut raw)?;
        let h = match Header::decode(&raw) {
            Slot::Erased => break,
            Slot::Torn => {
                // A header write cut short: nothing after it in its slot was written, and the
                // next write after a reboot starts right after the slot (FORMAT.md).
                txn = None;
                out.torn = true;
                pos += geo.header;
                continue;
            }
            Slot::Valid(h) => h,
        };
        let next = next_frame(geo, pos, &h)?;
        if next > end {
            return Err(FlashError::Corrupt { offset: pos, what: "frame runs past the end of its area" });
        }
        match h.kind {
            K_BEGIN => {
                if txn.is_some() {
                    out.torn = true;
                }
                let mut d = CRC.digest();
                d.update(&raw);
                txn = Some((pos, d));
            }
            K_COMMIT => match txn.take() {
                Some((start, d)) if d.clone().finalize() == h.vlen => {
                    replay(flash, geo, start, pos, index.as_deref_mut(), key_buf, &mut out)?;
                    out.txns += 1;
                    if first_only {
                        pos = next;
                        break;
                    }
                }
                _ => out.torn = true,
            },
            K_PUT | K_DELETE | K_CLEAR | K_SNAP | K_V2 => {
                if let Some((_, d)) = txn.as_mut() {
                    d.update(&raw);
                    let len = h.payload_len();
                    let mut done = 0u32;
                    while done < len {
                        let n = (len - done).min(chunk.len() as u32) as usize;
                        let part = chunk.get_mut(..n).ok_or(FlashError::Misuse("scan buffer"))?;
                        chip::read(flash, pos + geo.header + done, part)?;
                        d.update(part);
                        done += n as u32;
                    }
                } else {
                    out.torn = true;
                }
            }
            _ => return Err(FlashError::Corrupt { offset: pos, what: "unknown frame kind" }),
        }
        pos = next;
    }
    if txn.is_some() {
        out.torn = true;
    }
    out.tail = pos;
    Ok(out)
}

/// Applies the committed transaction whose frames run from `start` (its `K_BEGIN`) to `commit`.
pub(crate) fn replay<F: NorFlash>(
    flash: &RefCell<F>,
    geo: &Geometry,
    start: u32,
    commit: u32,
    mut index: Option<&mut VecView<u32>>,
    key_buf: &mut [u8],
    out: &mut Scanned,
) -> Result<(), F> {
    let mut pos = start;
    while pos < commit {
        let h = valid_header_at(flash, pos)?;
        match h.kind {
            K_SNAP => {
                let v2 = out.snap.map_or((None, 0), |s| (s.v2_first, s.v2_len));
                out.snap = Some(SnapInfo { frame: pos, v2_first: v2.0, v2_len: v2.1 });
            }
            K_V2 => {
                let s = out.snap.get_or_insert(SnapInfo { frame: 0, v2_first: None, v2_len: 0 });
                s.v2_first.get_or_insert(pos);
                s.v2_len = s.v2_len.saturating_add(h.vlen);
            }
            K_PUT | K_DELETE | K_CLEAR => {
                if let Some(index) = index.as_deref_mut() {
                    let bucket = Bucket::from_id(h.bucket)
                        .ok_or(FlashError::Corrupt { offset: pos, what: "unknown bucket id" })?;
                    if h.kind == K_CLEAR {
                        clear_bucket(flash, geo, index, bucket)?;
                    } else {
                        let klen = usize::from(h.klen);
                        let key = key_buf
                            .get_mut(..klen)
                            .ok_or(FlashError::Full("a stored key is longer than the record buffer"))?;
                        chip::read(flash, pos + geo.header, key)?;
                        let found = find(flash, geo, index, bucket, key)?;
                        match (h.kind, found) {
                            (K_PUT, Ok(i)) => {
                                if let Some(slot) = index.get_mut(i) {
                                    *slot = pos;
                                }
                            }
                            (K_PUT, Err(i)) => {
                                index.insert(i, pos).map_err(|_| FlashError::Full("the record index is full"))?
                            }
                            (_, Ok(i)) if i < index.len() => {
                                index.remove(i);
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
        pos = next_frame(geo, pos, &h)?;
    }
    Ok(())
}

/// Compares the record at `pos` with `(bucket, key)`.
pub(crate) fn cmp_at<F: NorFlash>(
    flash: &RefCell<F>,
    geo: &Geometry,
    pos: u32,
    bucket: Bucket,
    key: &[u8],
) -> Result<Ordering, F> {
    let h = valid_header_at(flash, pos)?;
    match h.bucket.cmp(&bucket.id()) {
        Ordering::Equal => {}
        other => return Ok(other),
    }
    let klen = usize::from(h.klen);
    let mut chunk = [0u8; 32];
    let mut done = 0usize;
    while done < klen.min(key.len()) {
        let n = (klen.min(key.len()) - done).min(chunk.len());
        let mine = chunk.get_mut(..n).ok_or(FlashError::Misuse("compare buffer"))?;
        chip::read(flash, pos + geo.header + done as u32, mine)?;
        let theirs = key.get(done..done + n).ok_or(FlashError::Misuse("compare key"))?;
        match (*mine).cmp(theirs) {
            Ordering::Equal => {}
            other => return Ok(other),
        }
        done += n;
    }
    Ok(klen.cmp(&key.len()))
}

/// Binary search of the index: `Ok(i)` where `(bucket, key)` is, `Err(i)` where it would go.
pub(crate) fn find<F: NorFlash>(
    flash: &RefCell<F>,
    geo: &Geometry,
    index: &VecView<u32>,
    bucket: Bucket,
    key: &[u8],
) -> Result<core::result::Result<usize, usize>, F> {
    let (mut lo, mut hi) = (0usize, index.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let pos = *index.get(mid).ok_or(FlashError::Misuse("index probe"))?;
        match cmp_at(flash, geo, pos, bucket, key)? {
            Ordering::Less => lo = mid + 1,
            Ordering::Greater => hi = mid,
            Ordering::Equal => return Ok(Ok(mid)),
        }
    }
    Ok(Err(lo))
}

/// The index range of `bucket`.
pub(crate) fn bucket_range<F: NorFlash>(
    flash: &RefCell<F>,
    geo: &Geometry,
    index: &VecView<u32>,
    bucket: Bucket,
) -> Result<(usize, usize), F> {
    let lo = find(flash, geo, index, bucket, &[])?.unwrap_or_else(|i| i);
    let mut hi = lo;
    while let Some(pos) = index.get(hi) {
        if valid_header_at(flash, *pos)?.bucket != bucket.id() {
            break;
        }
        hi += 1;
    }
    Ok((lo, hi))
}

/// Removes every entry of `bucket` from the index.
pub(crate) fn clear_bucket<F: NorFlash>(
    flash: &RefCell<F>,
    geo: &Geometry,
    index: &mut VecView<u32>,
    bucket: Bucket,
) -> Result<bool, F> {
    let (lo, hi) = bucket_range(flash, geo, index, bucket)?;
    if lo == hi {
        return Ok(false);
    }
    let len = index.len();
    if let Some(tail) = index.get_mut(lo..len) {
        tail.copy_within(hi - lo.., 0);
    }
    index.truncate(len - (hi - lo));
    Ok(true)
}
