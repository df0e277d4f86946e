//! Range reads in pages, so that no etcd response grows past what the client accepts whatever the
//! data: every range read of the queue and the store goes through [`RangeRead`] (alone, as
//! [`RangePages`], or as the first page inside a transaction, completed by [`RangeRead::rest`]).
//!
//! etcd can limit a range by count but not by bytes, so the bytes are bounded through the count:
//! the caller states the largest value its key space holds (`value_bound`, enforced or known by
//! the writer of those keys), and a page asks for as many keys as fit [`MAX_RESPONSE_BYTES`] at
//! that size. Pages shrink when a larger value than stated has been seen, so a wrong bound costs
//! pages, not a failed read. Pages after the first read at the first page's revision: a paged
//! read is one consistent snapshot, like a single range would be.
//!
//! etcd 3.4 collects every key of a range before it applies the limit (its answer counts them
//! all), so a page of a large range costs the whole remaining range: paging through 200,000
//! registry keys took a quarter of a second per page. [`RangePages`] therefore reads a window of
//! the range, the keys sharing the page's start up to a prefix length it adapts from the count
//! etcd returns: longer while a window holds many pages' worth, shorter while it holds little.
//! Each request then costs about a page, whatever the range.

use std::time::Duration;

use etcd_client::{Client, GetOptions, GetResponse, KeyValue, Txn, TxnOp, TxnOpResponse};

use crate::error::QueueError;
use crate::retry::with_retry;

/// The most bytes of keys and values one page (or the pages of one transaction together) may
/// carry: a quarter of the client's 4 MiB message limit, leaving room for framing and for values
/// up to four times larger than their stated bound.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// The most keys one page asks for, however small the values.
pub const MAX_PAGE_KEYS: usize = 10_000;

/// What a page allows for the part of a key after the range's start key (keys in one range share
/// a prefix; their tails are short).
const KEY_TAIL_BYTES: usize = 160;

/// One range of keys and how large its values can be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRead {
    start: Vec<u8>,
    end: Vec<u8>,
    keys_only: bool,
    value_bound: usize,
    /// Most keys read in all (`None`: the whole range).
    max_keys: Option<usize>,
}

impl RangeRead {
    /// Every key starting with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>, value_bound: usize) -> Self {
        let start = prefix.into();
        let end = prefix_end(&start);
        RangeRead {
            start,
            end,
            keys_only: false,
            value_bound,
            max_keys: None,
        }
    }

    /// The keys in `[start, end)`.
    pub fn between(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>, value_bound: usize) -> Self {
        RangeRead {
            start: start.into(),
            end: end.into(),
            keys_only: false,
            value_bound,
            max_keys: None,
        }
    }

    /// At most the first `keys` keys of the range.
    pub fn limit(mut self, keys: usize) -> Self {
        self.max_keys = Some(keys);
        self
    }

    /// How many keys with values of at most the stated bound one page holds.
    pub fn keys_per_page(&self) -> usize {
        self.page_keys(0, MAX_RESPONSE_BYTES)
    }

    /// Keys only: no value is read (so values do not count).
    pub fn keys_only(mut self) -> Self {
        self.keys_only = true;
        self.value_bound = 0;
        self
    }

    /// Keys a page asks for when the largest value seen so far is `largest_seen` bytes and the
    /// page may carry `budget` bytes.
    fn page_keys(&self, largest_seen: usize, budget: usize) -> usize {
        let per_key = self.start.len() + KEY_TAIL_BYTES + self.value_bound.max(largest_seen);
        let keys = (budget / per_key).clamp(1, MAX_PAGE_KEYS);
        self.max_keys.map_or(keys, |max| keys.min(max.max(1)))
    }

    fn options(&self, limit: usize, revision: i64) -> GetOptions {
        let mut options = GetOptions::new()
            .with_range(self.end.clone())
            .with_limit(limit as i64)
            .with_revision(revision);
        if self.keys_only {
            options = options.with_keys_only();
        }
        options
    }

    /// The first page as an operation of a transaction that carries `share` such pages (their
    /// response shares [`MAX_RESPONSE_BYTES`]). Finish the range with [`RangeRead::rest`].
    pub fn txn_op(&self, share: usize) -> TxnOp {
        let limit = self.page_keys(0, MAX_RESPONSE_BYTES / share.max(1));
        TxnOp::get(self.start.clone(), Some(self.options(limit, 0)))
    }

    /// Every key of the range: `first` (the answer to [`RangeRead::txn_op`], read at
    /// `revision`) and the pages after it, read at the same revision.
    pub async fn rest(
        &self,
        client: &Client,
        operation: &'static str,
        mut first: GetResponse,
        revision: i64,
        retry_budget: Duration,
    ) -> Result<Vec<KeyValue>, QueueError> {
        let more = first.more();
        let mut kvs = first.take_kvs();
        if more {
            if let Some(last) = kvs.last() {
                let mut pages = RangePages::new(
                    client.clone(),
                    operation,
                    self.after(last.key(), kvs.len()),
                    retry_budget,
                )
                .at_revision(revision);
                while let Some(page) = pages.next_page().await? {
                    kvs.extend(page);
                }
            }
        }
        Ok(kvs)
    }

    /// The rest of this range after `key`, `read` keys having been read.
    fn after(&self, key: &[u8], read: usize) -> RangeRead {
        let mut start = key.to_vec();
        start.push(0);
        RangeRead {
            start,
            max_keys: self.max_keys.map(|max| max.saturating_sub(read)),
            ..self.clone()
        }
    }

    fn exhausted(&self) -> bool {
        self.max_keys == Some(0)
    }
}

/// Every key of `ranges`, read at one revision: their first pages in one transaction, the rest
/// at its revision. Returns the revision and the keys of each range, in order.
pub async fn read_ranges(
    client: &Client,
    operation: &'static str,
    ranges: &[RangeRead],
    budget: Duration,
) -> Result<(i64, Vec<Vec<KeyValue>>), QueueError> {
    let ops: Vec<TxnOp> = ranges.iter().map(|r| r.txn_op(ranges.len())).collect();
    let response = with_retry(operation, budget, || {
        let mut client = client.clone();
        let txn = Txn::new().and_then(ops.clone());
        async move { client.txn(txn).await }
    })
    .await?;
    let revision = response.header().map(|h| h.revision()).unwrap_or_default();
    let kvs = complete_ranges(
        client,
        operation,
        ranges,
        response.op_responses(),
        revision,
        budget,
    )
    .await?;
    Ok((revision, kvs))
}

/// The keys of `ranges`, whose first pages are `responses` (in order) of a transaction read at
/// `revision`, each completed at that revision.
pub async fn complete_ranges(
    client: &Client,
    operation: &'static str,
    ranges: &[RangeRead],
    responses: Vec<TxnOpResponse>,
    revision: i64,
    budget: Duration,
) -> Result<Vec<Vec<KeyValue>>, QueueError> {
    let mut all = Vec::with_capacity(ranges.len());
    for (range, response) in ranges.iter().zip(responses) {
        let TxnOpResponse::Get(first) = response else {
            all.push(Vec::new());
            continue;
        };
        all.push(
            range
                .rest(client, operation, first, revision, budget)
                .await?,
        );
    }
    all.resize_with(ranges.len(), Vec::new);
    Ok(all)
}

/// A range read page by page.
pub struct RangePages {
    client: Client,
    operation: &'static str,
    range: RangeRead,
    revision: i64,
    largest_seen: usize,
    done: bool,
    retry_budget: Duration,
    /// The window's prefix length (`None`: the whole rest of the range).
    window: Option<usize>,
}

/// A window narrows once it holds more than this many pages' worth of keys, and widens once it
/// holds less than one page's worth.
const WINDOW_PAGES: u64 = 4;

impl RangePages {
    /// Pages of `range`; transient etcd failures of a page are retried for `retry_budget`.
    pub fn new(
        client: Client,
        operation: &'static str,
        range: RangeRead,
        retry_budget: Duration,
    ) -> Self {
        RangePages {
            client,
            operation,
            range,
            revision: 0,
            largest_seen: 0,
            done: false,
            retry_budget,
            window: None,
        }
    }

    /// Retries a page's transient failures for `budget` instead.
    pub fn retrying_for(mut self, budget: Duration) -> Self {
        self.retry_budget = budget;
        self
    }

    /// Reads every page at `revision` (0: the first page's).
    pub fn at_revision(mut self, revision: i64) -> Self {
        self.revision = revision;
        self
    }

    /// The revision the pages are read at (0 before the first page).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The next page, `None` once the range is exhausted. A page is never empty.
    pub async fn next_page(&mut self) -> Result<Option<Vec<KeyValue>>, QueueError> {
        loop {
            if self.done || self.range.exhausted() {
                return Ok(None);
            }
            let limit = self.range.page_keys(self.largest_seen, MAX_RESPONSE_BYTES);
            let window_end = self.window_end();
            let options = self
                .range
                .options(limit, self.revision)
                .with_range(window_end.clone());
            let start = self.range.start.clone();
            let mut response = with_retry(self.operation, self.retry_budget, || {
                let mut client = self.client.clone();
                let (start, options) = (start.clone(), options.clone());
                async move { client.get(start, Some(options)).await }
            })
            .await?;
            if self.revision == 0 {
                self.revision = response.header().map(|h| h.revision()).unwrap_or_default();
            }
            let more = response.more();
            let in_window = u64::try_from(response.count()).unwrap_or(0);
            let kvs = response.take_kvs();
            self.largest_seen = kvs
                .iter()
                .map(|kv| kv.value().len())
                .fold(self.largest_seen, usize::max);
            self.adapt_window(in_window, limit as u64);
            match kvs.last() {
                Some(last) if more => self.range = self.range.after(last.key(), kvs.len()),
                // The window is read: the range goes on after it, if it is not the range's end.
                _ if window_end != self.range.end => {
                    let read = kvs.len();
                    self.range = RangeRead {
                        start: window_end,
                        max_keys: self.range.max_keys.map(|max| max.saturating_sub(read)),
                        ..self.range.clone()
                    };
                }
                _ => self.done = true,
            }
            if !kvs.is_empty() {
                return Ok(Some(kvs));
            }
        }
    }

    /// Where the window that starts the rest of the range ends: after the keys that share its
    /// start key's first `window` bytes, or the range's own end.
    fn window_end(&self) -> Vec<u8> {
        let end = &self.range.end;
        let Some(length) = self.window else {
            return end.clone();
        };
        let start = &self.range.start;
        let candidate = prefix_end(&start[..length.min(start.len())]);
        // `[0]` as an end is the end of the key space; an empty end is not a range.
        let unbounded = |key: &[u8]| key == [0];
        if end.is_empty() || unbounded(&candidate) || (!unbounded(end) && end <= &candidate) {
            end.clone()
        } else {
            candidate
        }
    }

    /// Narrows the window after one that held `in_window` keys, pages of `limit`, was too
    /// costly to read, and widens it after one that held less than a page.
    fn adapt_window(&mut self, in_window: u64, limit: u64) {
        if in_window > WINDOW_PAGES * limit {
            let shared = common_prefix(&self.range.start, &self.range.end);
            self.window = Some(self.window.map_or(shared + 1, |length| length + 1));
        } else if in_window < limit {
            self.window = match self.window {
                Some(length) if length > common_prefix(&self.range.start, &self.range.end) + 1 => {
                    Some(length - 1)
                }
                _ => None,
            };
        }
    }

    /// Every remaining key, collected: for ranges whose size the caller bounds otherwise.
    pub async fn collect(mut self) -> Result<Vec<KeyValue>, QueueError> {
        let mut kvs = Vec::new();
        while let Some(page) = self.next_page().await? {
            kvs.extend(page);
        }
        Ok(kvs)
    }
}

/// How many leading bytes `a` and `b` share.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The end of the range of keys starting with `prefix` (etcd's prefix end).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|b| *b < 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        // Every byte is 0xff: the range runs to the end of the key space.
        None => vec![0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_fit_the_budget_at_the_stated_or_seen_value_size() {
        let range = RangeRead::prefix("/p/store/gpu/", 4096);
        let keys = range.page_keys(0, MAX_RESPONSE_BYTES);
        assert_eq!(keys, MAX_RESPONSE_BYTES / (13 + KEY_TAIL_BYTES + 4096));
        assert!(range.page_keys(100_000, MAX_RESPONSE_BYTES) < keys / 20);
        assert_eq!(
            range.page_keys(10 * MAX_RESPONSE_BYTES, MAX_RESPONSE_BYTES),
            1
        );
        let keys_only = RangeRead::prefix("/p/", 1 << 20).keys_only();
        assert_eq!(
            keys_only.page_keys(0, MAX_RESPONSE_BYTES),
            MAX_RESPONSE_BYTES / (3 + KEY_TAIL_BYTES),
            "values do not count"
        );
    }

    #[test]
    fn prefix_end_is_the_next_key_after_every_prefixed_one() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        let range = RangeRead::prefix("/a/", 0).limit(5).after(b"/a/x", 2);
        assert_eq!(range.start, b"/a/x\0".to_vec());
        assert_eq!(range.end, b"/a0".to_vec());
        assert_eq!(range.max_keys, Some(3));
        assert_eq!(range.page_keys(0, MAX_RESPONSE_BYTES), 3);
    }
}
