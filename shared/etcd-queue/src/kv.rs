//! Reading what etcd answered: the first key-value of a get inside a transaction, and values
//! stored as decimal text (heads, offsets, the depth key, attempt numbers, lease ids).

use std::str::FromStr;
use std::time::Duration;

use etcd_client::{Client, KeyValue, TxnOpResponse};

use crate::error::QueueError;
use crate::retry::with_retry;

/// The first key-value `response` returned, if it is a get that found one.
pub fn first_kv(response: Option<&TxnOpResponse>) -> Option<&KeyValue> {
    match response {
        Some(TxnOpResponse::Get(get)) => get.kvs().first(),
        _ => None,
    }
}

/// `kv`'s value read as decimal text; `None` if it is not a number of that type.
pub fn decimal_value<T: FromStr>(kv: &KeyValue) -> Option<T> {
    std::str::from_utf8(kv.value()).ok()?.parse().ok()
}

/// The decimal value stored at `key` (`None`: absent or not a number), read with retries for
/// `budget`.
pub(crate) async fn read_decimal<T: FromStr>(
    client: &Client,
    operation: &'static str,
    key: String,
    budget: Duration,
) -> Result<Option<T>, QueueError> {
    let response = with_retry(operation, budget, || {
        let mut client = client.clone();
        let key = key.clone();
        async move { client.get(key, None).await }
    })
    .await?;
    Ok(response.kvs().first().and_then(decimal_value))
}
