//! Builds small bbolt files by hand for tests: the layout bbolt writes, from a tree of buckets.

use super::{BRANCH, BUCKET_HEADER, ELEMENT, LEAF, MAGIC, META_SUMMED, NO_FREELIST, PAGE_HEADER, VERSION, fnv1a64};

/// A value in a test bucket: bytes, or a nested bucket.
#[derive(Clone, Debug)]
pub(crate) enum Node {
    Value(Vec<u8>),
    Bucket(Vec<(Vec<u8>, Node)>),
}

/// A bucket's entries, sorted by key.
pub(crate) fn bucket(mut entries: Vec<(Vec<u8>, Node)>) -> Node {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Node::Bucket(entries)
}

pub(crate) fn value(bytes: impl Into<Vec<u8>>) -> Node {
    Node::Value(bytes.into())
}

/// How the builder lays out pages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub page_size: usize,
    /// At most this many elements per leaf or branch page, to force deep trees in tests.
    pub fanout: usize,
    /// Store small buckets without nested buckets inline, as bbolt does.
    pub inline: bool,
}

impl Default for Layout {
    fn default() -> Self {
        Layout { page_size: 4096, fanout: 64, inline: true }
    }
}

struct Builder {
    layout: Layout,
    /// Page runs, indexed by page id; `None` for the overflow pages of a run and the metas.
    pages: Vec<Option<Vec<u8>>>,
}

impl Builder {
    fn alloc(&mut self, mut bytes: Vec<u8>) -> u64 {
        let id = self.pages.len() as u64;
        let ps = self.layout.page_size;
        let run = bytes.len().div_ceil(ps).max(1);
        bytes.resize(run * ps, 0);
        bytes[0..8].copy_from_slice(&id.to_le_bytes());
        bytes[12..16].copy_from_slice(&((run - 1) as u32).to_le_bytes());
        self.pages.push(Some(bytes));
        for _ in 1..run {
            self.pages.push(None);
        }
        id
    }

    /// Writes the bucket and returns its bucket value (header, and inline page if inlined).
    fn write_bucket(&mut self, entries: &[(Vec<u8>, Node)]) -> Vec<u8> {
        let mut items = Vec::new();
        for (key, node) in entries {
            match node {
                Node::Value(v) => items.push((0u32, key.clone(), v.clone())),
                Node::Bucket(children) => items.push((1u32, key.clone(), self.write_bucket(children))),
            }
        }
        let size = PAGE_HEADER + items.iter().map(|(_, k, v)| ELEMENT + k.len() + v.len()).sum::<usize>();
        if self.layout.inline
            && items.iter().all(|(f, _, _)| *f == 0)
            && size <= self.layout.page_size / 4
            && items.len() <= self.layout.fanout
        {
            let mut out = vec![0u8; BUCKET_HEADER];
            out.extend_from_slice(&leaf_page(&items));
            return out;
        }
        let root = self.write_tree(&items);
        let mut out = root.to_le_bytes().to_vec();
        out.extend_from_slice(&0u64.to_le_bytes());
        out
    }

    /// Writes leaves of at most `fanout` entries, then branch levels until one root.
    fn write_tree(&mut self, items: &[(u32, Vec<u8>, Vec<u8>)]) -> u64 {
        let mut level: Vec<(Vec<u8>, u64)> = Vec::new();
        for chunk in items.chunks(self.layout.fanout.max(1)) {
            let id = self.alloc(leaf_page(chunk));
            level.push((chunk[0].1.clone(), id));
        }
        if level.is_empty() {
            level.push((Vec::new(), self.alloc(leaf_page(&[]))));
        }
        while level.len() > 1 {
            let mut next = Vec::new();
            for chunk in level.chunks(self.layout.fanout.max(2)) {
                let id = self.alloc(branch_page(chunk));
                next.push((chunk[0].0.clone(), id));
            }
            level = next;
        }
        level[0].1
    }
}

fn leaf_page(items: &[(u32, Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_HEADER + items.len() * ELEMENT];
    page[8..10].copy_from_slice(&LEAF.to_le_bytes());
    page[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
    for (i, (flags, key, value)) in items.iter().enumerate() {
        let at = PAGE_HEADER + i * ELEMENT;
        let pos = (page.len() - at) as u32;
        page[at..at + 4].copy_from_slice(&flags.to_le_bytes());
        page[at + 4..at + 8].copy_from_slice(&pos.to_le_bytes());
        page[at + 8..at + 12].copy_from_slice(&(key.len() as u32).to_le_bytes());
        page[at + 12..at + 16].copy_from_slice(&(value.len() as u32).to_le_bytes());
        page.extend_from_slice(key);
        page.extend_from_slice(value);
    }
    page
}

fn branch_page(children: &[(Vec<u8>, u64)]) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_HEADER + children.len() * ELEMENT];
    page[8..10].copy_from_slice(&BRANCH.to_le_bytes());
    page[10..12].copy_from_slice(&(children.len() as u16).to_le_bytes());
    for (i, (key, id)) in children.iter().enumerate() {
        let at = PAGE_HEADER + i * ELEMENT;
        let pos = (page.len() - at) as u32;
        page[at..at + 4].copy_from_slice(&pos.to_le_bytes());
        page[at + 4..at + 8].copy_from_slice(&(key.len() as u32).to_le_bytes());
        page[at + 8..at + 16].copy_from_slice(&id.to_le_bytes());
        page.extend_from_slice(key);
    }
    page
}

/// Writes a meta page's meta (page id, root, high-water mark, txid) with a valid checksum.
pub(crate) fn write_meta(file: &mut [u8], page_size: usize, page: u64, root: u64, high_water: u64, txid: u64) {
    let at = page as usize * page_size;
    file[at..at + 8].copy_from_slice(&page.to_le_bytes());
    file[at + 8..at + 10].copy_from_slice(&0x04u16.to_le_bytes());
    let m = at + PAGE_HEADER;
    file[m..m + 4].copy_from_slice(&MAGIC.to_le_bytes());
    file[m + 4..m + 8].copy_from_slice(&VERSION.to_le_bytes());
    file[m + 8..m + 12].copy_from_slice(&(page_size as u32).to_le_bytes());
    file[m + 12..m + 16].copy_from_slice(&0u32.to_le_bytes());
    file[m + 16..m + 24].copy_from_slice(&root.to_le_bytes());
    file[m + 24..m + 32].copy_from_slice(&0u64.to_le_bytes());
    file[m + 32..m + 40].copy_from_slice(&NO_FREELIST.to_le_bytes());
    file[m + 40..m + 48].copy_from_slice(&high_water.to_le_bytes());
    file[m + 48..m + 56].copy_from_slice(&txid.to_le_bytes());
    fix_meta_checksum(file, page_size, page);
}

/// Recomputes the checksum of meta page `page` after a test changed it.
pub(crate) fn fix_meta_checksum(file: &mut [u8], page_size: usize, page: u64) {
    let m = page as usize * page_size + PAGE_HEADER;
    let sum = fnv1a64(&file[m..m + META_SUMMED]);
    file[m + META_SUMMED..m + META_SUMMED + 8].copy_from_slice(&sum.to_le_bytes());
}

/// A bbolt file whose root bucket holds `root` (which must be a `Node::Bucket`). Meta page 1
/// is current (txid 3), meta page 0 is the previous transaction (txid 2) with the same root.
pub(crate) fn build(root: &Node, layout: Layout) -> Vec<u8> {
    let Node::Bucket(entries) = root else { panic!("the root must be a bucket") };
    let mut builder = Builder { layout, pages: vec![None, None] };
    // The root bucket is never inline; its children may be.
    let mut values = Vec::new();
    for (key, node) in entries {
        match node {
            Node::Value(v) => values.push((0u32, key.clone(), v.clone())),
            Node::Bucket(children) => values.push((1u32, key.clone(), builder.write_bucket(children))),
        }
    }
    let header = builder.write_tree(&values);
    let ps = layout.page_size;
    let high_water = builder.pages.len() as u64;
    let mut file = vec![0u8; builder.pages.len() * ps];
    for (id, page) in builder.pages.iter().enumerate() {
        if let Some(bytes) = page {
            file[id * ps..id * ps + bytes.len()].copy_from_slice(bytes);
        }
    }
    write_meta(&mut file, ps, 0, header, high_water, 2);
    write_meta(&mut file, ps, 1, header, high_water, 3);
    file
}
