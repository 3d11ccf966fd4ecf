//! Run: `cargo run -p electric-core --example pool`
//!
//! Object pools: reuse buffers (reset on return) instead of allocating, bounded so a burst does
//! not pin memory forever.

use electric_core::collections::{Pool, ReusePool};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let buffers = Pool::new(4, || Vec::<u8>::with_capacity(4096))?.with_reset(Vec::clear);
    for round in 0..3 {
        let mut buf = buffers.get();
        buf.extend_from_slice(format!("round {round}").as_bytes());
        println!("{} bytes, capacity {}", buf.len(), buf.capacity());
        buffers.put(buf);
    }
    println!("pool: {:?}", buffers.stats());

    let channels: ReusePool<String> = ReusePool::new(2)?;
    println!("empty reuse pool gives {:?}", channels.try_get());
    channels.put("conn-1".to_owned());
    println!("then {:?}", channels.try_get());
    Ok(())
}
