use std::ops::ControlFlow;

use super::testdb::{Layout, Node, bucket, build, fix_meta_checksum, value, write_meta};
use super::*;

const PS: usize = 4096;

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;
type Entries = Vec<(Vec<u8>, Vec<u8>, bool)>;

fn key(i: u32) -> Vec<u8> {
    format!("k{i:05}").into_bytes()
}

/// A root with: `big` (300 keys in a 3-level tree at fanout 8, and a value spanning overflow
/// pages), `small` (inline), `nest` (a bucket holding a bucket), and a plain value.
fn sample() -> (Node, Pairs) {
    let mut big: Pairs = (0..300).map(|i| (key(i), format!("v{i}").into_bytes())).collect();
    big[7].1 = vec![0xAB; 3 * PS + 100];
    let root = bucket(vec![
        (b"big".to_vec(), bucket(big.iter().map(|(k, v)| (k.clone(), value(v.clone()))).collect())),
        (b"small".to_vec(), bucket(vec![(b"a".to_vec(), value("1")), (b"b".to_vec(), value("2"))])),
        (b"nest".to_vec(), bucket(vec![(b"inner".to_vec(), bucket(vec![(b"x".to_vec(), value("y"))]))])),
        (b"plain".to_vec(), value("not a bucket")),
    ]);
    (root, big)
}

fn layout() -> Layout {
    Layout { page_size: PS, fanout: 8, inline: true }
}

fn entries<S: ReadAt>(db: &Db<S>, b: &Bucket) -> Result<Entries, BoltError> {
    let mut out = Vec::new();
    db.for_each::<BoltError>(b, |e| {
        out.push((e.key().to_vec(), e.value().to_vec(), e.is_bucket()));
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(out)
}

/// The error of `result`, without printing a large `Ok` value if there is none.
fn refused<T>(result: Result<T, BoltError>) -> BoltError {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn root_page(file: &[u8]) -> usize {
    let m = PS + PAGE_HEADER;
    u64::from_le_bytes(file[m + 16..m + 24].try_into().unwrap()) as usize
}

fn big_root(file: &[u8]) -> usize {
    let db = Db::open(file).unwrap();
    db.bucket(&db.root(), b"big").unwrap().unwrap().root_page().unwrap() as usize
}

#[test]
fn walks_every_bucket_in_key_order() {
    let (root, big) = sample();
    let file = build(&root, layout());
    let db = Db::open(file.as_slice()).unwrap();
    assert_eq!(db.meta().txid, 3);
    assert_eq!(db.meta().page, 1);
    assert!(db.meta().other_valid);
    assert_eq!(db.meta().freelist, None);

    let top = entries(&db, &db.root()).unwrap();
    let names: Vec<&[u8]> = top.iter().map(|(k, _, _)| k.as_slice()).collect();
    assert_eq!(names, [&b"big"[..], b"nest", b"plain", b"small"]);
    assert_eq!(top.iter().map(|e| e.2).collect::<Vec<_>>(), [true, true, false, true]);

    let big_bucket = db.bucket(&db.root(), b"big").unwrap().unwrap();
    let got: Pairs = entries(&db, &big_bucket).unwrap().into_iter().map(|(k, v, _)| (k, v)).collect();
    assert_eq!(got, big, "the 3-level tree with an overflow value reads back whole and in order");

    let small = db.bucket(&db.root(), b"small").unwrap().unwrap();
    assert_eq!(small.root_page(), None, "a small bucket is inline");
    let got = entries(&db, &small).unwrap();
    assert_eq!(got, vec![(b"a".to_vec(), b"1".to_vec(), false), (b"b".to_vec(), b"2".to_vec(), false)]);

    let nest = db.bucket(&db.root(), b"nest").unwrap().unwrap();
    let inner = db.bucket(&nest, b"inner").unwrap().unwrap();
    assert_eq!(db.get(&inner, b"x").unwrap(), Some(b"y".to_vec()));

    assert_eq!(db.bucket(&db.root(), b"plain").unwrap(), None, "a plain value is not a bucket");
    assert_eq!(db.get(&db.root(), b"plain").unwrap(), Some(b"not a bucket".to_vec()));
    assert_eq!(db.get(&db.root(), b"big").unwrap(), None, "a bucket is not a plain value");
    assert_eq!(db.bucket(&db.root(), b"missing").unwrap(), None);
    for i in [0, 7, 8, 63, 64, 150, 299] {
        assert_eq!(db.get(&big_bucket, &key(i)).unwrap(), Some(big[i as usize].1.clone()), "get {i}");
    }
    assert_eq!(db.get(&big_bucket, b"k99999").unwrap(), None);
    assert_eq!(db.get(&big_bucket, b"a").unwrap(), None);
}

#[test]
fn the_walk_stops_when_the_visitor_breaks() {
    let (root, _) = sample();
    let file = build(&root, layout());
    let db = Db::open(file.as_slice()).unwrap();
    let big = db.bucket(&db.root(), b"big").unwrap().unwrap();
    let mut seen = 0;
    db.for_each::<BoltError>(&big, |_| {
        seen += 1;
        Ok(if seen == 10 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
    })
    .unwrap();
    assert_eq!(seen, 10);
}

#[test]
fn an_empty_bucket_yields_nothing() {
    let file = build(&bucket(vec![(b"e".to_vec(), bucket(vec![]))]), Layout { inline: false, ..layout() });
    let db = Db::open(file.as_slice()).unwrap();
    let e = db.bucket(&db.root(), b"e").unwrap().unwrap();
    assert!(e.root_page().is_some());
    assert_eq!(entries(&db, &e).unwrap(), vec![]);
}

#[test]
fn the_valid_meta_with_the_higher_txid_wins_and_a_bad_one_is_skipped() {
    let (root, _) = sample();
    let mut file = build(&root, layout());
    let high_water = (file.len() / PS) as u64;
    let root_id = root_page(&file) as u64;
    write_meta(&mut file, PS, 0, root_id, high_water, 9);
    assert_eq!(Db::open(file.as_slice()).unwrap().meta().page, 0, "txid 9 on page 0 beats txid 3");

    // A flipped byte in meta 0 makes bbolt fall back to meta 1.
    file[PAGE_HEADER + 50] ^= 0x01;
    let db = Db::open(file.as_slice()).unwrap();
    assert_eq!((db.meta().page, db.meta().txid, db.meta().other_valid), (1, 3, false));
}

#[test]
fn a_persisted_freelist_is_accepted() {
    let (root, _) = sample();
    let mut file = build(&root, layout());
    for page in [0u64, 1] {
        let m = page as usize * PS + PAGE_HEADER;
        file[m + 32..m + 40].copy_from_slice(&2u64.to_le_bytes());
        fix_meta_checksum(&mut file, PS, page);
    }
    let db = Db::open(file.as_slice()).unwrap();
    assert_eq!(db.meta().freelist, Some(2));
}

#[test]
fn a_damaged_page_zero_is_survived_by_probing_for_page_one() {
    let (root, big) = sample();
    let mut file = build(&root, layout());
    file[PAGE_HEADER..PAGE_HEADER + 16].fill(0);
    let db = Db::open(file.as_slice()).unwrap();
    assert_eq!(db.meta().page, 1);
    let b = db.bucket(&db.root(), b"big").unwrap().unwrap();
    assert_eq!(entries(&db, &b).unwrap().len(), big.len());
}

#[test]
fn bad_magic_is_not_bbolt() {
    let (root, _) = sample();
    let mut file = build(&root, layout());
    for page in [0, 1] {
        file[page * PS + PAGE_HEADER..page * PS + PAGE_HEADER + 4].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    }
    let err = Db::open(file.as_slice()).unwrap_err();
    assert!(matches!(err, BoltError::NotBbolt { magic: 0x1234_5678 }), "{err}");
    let err = Db::open(vec![0u8; 8192]).unwrap_err();
    assert!(matches!(err, BoltError::NotBbolt { magic: 0 }), "{err}");
}

#[test]
fn both_metas_with_bad_checksums_are_refused() {
    let (root, _) = sample();
    let mut file = build(&root, layout());
    file[PAGE_HEADER + 48] ^= 0x40; // txid of meta 0
    file[PS + PAGE_HEADER + 48] ^= 0x40; // txid of meta 1
    let err = Db::open(file.as_slice()).unwrap_err();
    assert!(
        matches!(
            err,
            BoltError::NoValidMeta { meta0: MetaFault::BadChecksum { .. }, meta1: MetaFault::BadChecksum { .. } }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

#[test]
fn a_wrong_version_is_refused() {
    let (root, _) = sample();
    let mut file = build(&root, layout());
    for page in [0u64, 1] {
        let m = page as usize * PS + PAGE_HEADER;
        file[m + 4..m + 8].copy_from_slice(&3u32.to_le_bytes());
        fix_meta_checksum(&mut file, PS, page);
    }
    let err = Db::open(file.as_slice()).unwrap_err();
    assert!(
        matches!(err, BoltError::NoValidMeta { meta0: MetaFault::BadVersion(3), meta1: MetaFault::BadVersion(3) }),
        "{err}"
    );
}

#[test]
fn a_truncated_file_is_refused() {
    let (root, _) = sample();
    let file = build(&root, layout());
    let cut = &file[..file.len() - PS - 7];
    let err = Db::open(cut).unwrap_err();
    assert!(
        matches!(err, BoltError::Truncated { needed, len } if needed == file.len() as u64 && len == cut.len() as u64)
    );
    assert!(matches!(Db::open(&file[..40]).unwrap_err(), BoltError::TooSmall { len: 40 }));
    let mut longer = file.clone();
    longer.push(0);
    let err = Db::open(longer.as_slice()).unwrap_err();
    assert!(matches!(err, BoltError::PartialPage { page_size: 4096, .. }), "{err}");
}

#[test]
fn a_page_id_out_of_range_is_refused() {
    let (root, _) = sample();
    let mut file = build(&root, layout());
    let page = big_root(&file);
    // The first child of the big bucket's root branch.
    let at = page * PS + PAGE_HEADER + 8;
    file[at..at + 8].copy_from_slice(&999u64.to_le_bytes());
    let db = Db::open(file.as_slice()).unwrap();
    let b = db.bucket(&db.root(), b"big").unwrap().unwrap();
    let err = refused(entries(&db, &b));
    assert!(
        matches!(err, BoltError::PageOutOfRange { page: 999, from: PageLoc::Page(p), .. } if p == page as u64),
        "{err}"
    );
    // Pointing at a meta page is out of range too.
    file[at..at + 8].copy_from_slice(&1u64.to_le_bytes());
    let db = Db::open(file.as_slice()).unwrap();
    let err = refused(entries(&db, &b));
    assert!(matches!(err, BoltError::PageOutOfRange { page: 1, .. }), "{err}");
}

#[test]
fn a_page_loop_is_refused() {
    let (root, _) = sample();
    let mut file = build(&root, layout());
    let page = big_root(&file);
    // The root branch's second child points back at the root branch.
    let at = page * PS + PAGE_HEADER + ELEMENT + 8;
    file[at..at + 8].copy_from_slice(&(page as u64).to_le_bytes());
    let db = Db::open(file.as_slice()).unwrap();
    let b = db.bucket(&db.root(), b"big").unwrap().unwrap();
    let err = refused(entries(&db, &b));
    assert!(matches!(err, BoltError::PageCycle { page: p } if p == page as u64), "{err}");

    // A point lookup that follows the loop is refused as well.
    let second_key = {
        let mut cursor = db.cursor(&b);
        let mut k = Vec::new();
        for _ in 0..70 {
            if let Ok(Some(e)) = cursor.next() {
                k = e.key().to_vec();
            }
        }
        k
    };
    assert!(!second_key.is_empty());
    let err = db.get(&b, b"k00100").unwrap_err();
    assert!(matches!(err, BoltError::PageCycle { .. }), "{err}");
}

#[test]
fn a_shared_page_is_refused() {
    let (root, _) = sample();
    let mut file = build(&root, layout());
    let page = big_root(&file);
    // The second child of the root branch is the first child again.
    let first = page * PS + PAGE_HEADER + 8;
    let child: [u8; 8] = file[first..first + 8].try_into().unwrap();
    let at = page * PS + PAGE_HEADER + ELEMENT + 8;
    file[at..at + 8].copy_from_slice(&child);
    let db = Db::open(file.as_slice()).unwrap();
    let b = db.bucket(&db.root(), b"big").unwrap().unwrap();
    let err = refused(entries(&db, &b));
    assert!(matches!(err, BoltError::PageCycle { page } if page == u64::from_le_bytes(child)), "{err}");
}

#[test]
fn an_overlong_element_count_is_refused() {
    let (root, _) = sample();
    let mut file = build(&root, layout());
    let page = big_root(&file);
    file[page * PS + 10..page * PS + 12].copy_from_slice(&0xFFFFu16.to_le_bytes());
    let db = Db::open(file.as_slice()).unwrap();
    let b = db.bucket(&db.root(), b"big").unwrap().unwrap();
    let err = refused(entries(&db, &b));
    assert!(
        matches!(err, BoltError::CountTooLarge { page: PageLoc::Page(p), count: 0xFFFF, capacity: 255 } if p == page as u64),
        "{err}"
    );
}

#[test]
fn an_element_outside_its_page_is_refused() {
    let (root, _) = sample();
    let mut file = build(&root, layout());
    let page = big_root(&file);
    // The root branch's first key size runs past the page.
    let at = page * PS + PAGE_HEADER + 4;
    file[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let db = Db::open(file.as_slice()).unwrap();
    let b = db.bucket(&db.root(), b"big").unwrap().unwrap();
    let err = db.get(&b, b"k00001").unwrap_err();
    assert!(matches!(err, BoltError::ElementOutOfBounds { index: 0, .. }), "{err}");
}

#[test]
fn keys_out_of_order_are_refused() {
    let file = build(&bucket(vec![(b"b".to_vec(), bucket((0..20).map(|i| (key(i), value("v"))).collect()))]), layout());
    let mut file = file;
    // Rewrite one key of the first leaf to sort below its predecessor: k00003 -> k00000.
    let pos = file.windows(6).position(|w| w == b"k00003").unwrap();
    file[pos + 5] = b'0';
    let db = Db::open(file.as_slice()).unwrap();
    let b = db.bucket(&db.root(), b"b").unwrap().unwrap();
    let err = refused(entries(&db, &b));
    assert!(matches!(err, BoltError::KeysOutOfOrder { index: 3, .. }), "{err}");
    // After an error the cursor yields nothing more.
    let mut cursor = db.cursor(&b);
    while cursor.next().is_ok_and(|e| e.is_some()) {}
    assert!(matches!(cursor.next(), Ok(None)));
}

#[test]
fn a_page_with_a_foreign_id_or_type_is_refused() {
    let (root, _) = sample();
    let file = build(&root, layout());
    let page = big_root(&file);

    let mut bad_id = file.clone();
    bad_id[page * PS..page * PS + 8].copy_from_slice(&77u64.to_le_bytes());
    let db = Db::open(bad_id.as_slice()).unwrap();
    let b = Bucket { root: Root::Page(page as u64), sequence: 0, parent: PageLoc::Page(1) };
    let err = refused(entries(&db, &b));
    assert!(matches!(err, BoltError::PageIdMismatch { found: 77, .. }), "{err}");

    let mut bad_type = file.clone();
    bad_type[page * PS + 8..page * PS + 10].copy_from_slice(&0x10u16.to_le_bytes());
    let db = Db::open(bad_type.as_slice()).unwrap();
    let err = refused(entries(&db, &b));
    assert!(matches!(err, BoltError::UnexpectedPageType { flags: 0x10, .. }), "{err}");

    let mut bad_overflow = file;
    bad_overflow[page * PS + 12..page * PS + 16].copy_from_slice(&u32::MAX.to_le_bytes());
    let db = Db::open(bad_overflow.as_slice()).unwrap();
    let err = refused(entries(&db, &b));
    assert!(matches!(err, BoltError::OverflowTooLong { overflow: u32::MAX, .. }), "{err}");
}

#[test]
fn a_value_over_the_page_run_limit_is_refused_before_allocating() {
    let (root, _) = sample();
    let file = build(&root, layout());
    let limits = Limits { max_page_run: 2 * PS as u64 };
    let db = Db::open_prefix(file.as_slice(), file.len() as u64, limits).unwrap();
    let b = db.bucket(&db.root(), b"big").unwrap().unwrap();
    let err = refused(entries(&db, &b));
    assert!(matches!(err, BoltError::OverflowTooLong { overflow: 3, .. }), "{err}");
}

#[test]
fn a_short_bucket_header_is_refused() {
    let file = build(&bucket(vec![(b"x".to_vec(), bucket(vec![(b"a".to_vec(), value("1"))]))]), layout());
    let mut file = file;
    // Shrink the inline bucket value of "x" to 3 bytes: vsize of the root leaf's element 0.
    let root = root_page(&file);
    let at = root * PS + PAGE_HEADER + 12;
    file[at..at + 4].copy_from_slice(&3u32.to_le_bytes());
    let db = Db::open(file.as_slice()).unwrap();
    let err = db.bucket(&db.root(), b"x").unwrap_err();
    assert!(matches!(err, BoltError::BadBucketHeader { len: 3, .. }), "{err}");
}

#[test]
fn io_errors_are_reported_with_their_offset() {
    #[derive(Debug)]
    struct Failing;
    impl ReadAt for Failing {
        fn size(&self) -> std::io::Result<u64> {
            Ok(1 << 20)
        }
        fn read_exact_at(&self, _: &mut [u8], _: u64) -> std::io::Result<()> {
            Err(std::io::Error::other("medium gone"))
        }
    }
    let err = Db::open(Failing).unwrap_err();
    assert!(matches!(err, BoltError::Io { offset: 0, .. }), "{err}");
    assert!(core::error::Error::source(&err).is_some());
}

#[test]
fn fnv1a64_matches_go() {
    // Go: fnv.New64a() over "" and "a".
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
}

#[test]
fn a_bucket_root_out_of_range_names_the_page_holding_the_bucket() {
    let (root, _) = sample();
    let mut file = build(&root, layout());
    let big = big_root(&file) as u64;
    // Point the `big` bucket header (element 0 of the root bucket's leaf) at page 999.
    let leaf = root_page(&file) * PS;
    let elem = leaf + PAGE_HEADER;
    let pos = elem + u32::from_le_bytes(file[elem + 4..elem + 8].try_into().unwrap()) as usize + 3;
    assert_eq!(file[pos..pos + 8], big.to_le_bytes());
    file[pos..pos + 8].copy_from_slice(&999u64.to_le_bytes());
    let db = Db::open(file.as_slice()).unwrap();
    let b = db.bucket(&db.root(), b"big").unwrap().unwrap();
    let holder = PageLoc::Page(root_page(&file) as u64);
    let err = refused(entries(&db, &b));
    assert!(matches!(err, BoltError::PageOutOfRange { page: 999, from, .. } if from == holder), "{err}");
    let err = refused(db.get(&b, b"k00001"));
    assert!(matches!(err, BoltError::PageOutOfRange { page: 999, from, .. } if from == holder), "{err}");
    assert!(err.to_string().contains("references page 999"), "{err}");
}
