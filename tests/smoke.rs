//! The README's quick start, through the real binary.
mod common;
use common::*;
use std::time::Duration;

#[tokio::test]
async fn count_script_streams_ten_numbers_then_closes_normally() {
    let wsd = Wsd::start(&["scripts/count.sh"]);
    let mut c = wsd.connect("/").await;
    let (texts, close) = c.read_to_close(Duration::from_secs(10)).await;
    assert_eq!(texts, (1..=10).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!(close.map(|c| c.0), Some(1000));
}
