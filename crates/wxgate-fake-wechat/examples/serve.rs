//! Runs the demo world standalone, for benchmarks and poking with curl:
//! `cargo run --release -p wxgate-fake-wechat --example serve [ADDR]` (default 127.0.0.1:0).
//!
//! The OA accepts any openid starting with `o` and has no limits, so a load generator can send
//! template messages as fast as it likes (see `examples/post.lua`).

use std::net::TcpListener;

use wxgate_fake_wechat::{FakeConfig, FakeWechat, Limits};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let mut config = FakeConfig::demo();
    for app in &mut config.apps {
        app.accept_any_openid = true;
        app.limits = Limits::default();
    }
    // A benchmark must not grow the record without bound.
    config.max_records = 100_000;
    let fake = FakeWechat::start(config, TcpListener::bind(addr)?).await?;
    println!("{}", fake.base_url());
    tokio::signal::ctrl_c().await?;
    fake.stop().await;
    Ok(())
}
