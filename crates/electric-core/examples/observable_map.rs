//! Run: `cargo run -p electric-core --example observable_map`
//!
//! An observable map: a watcher gets the keys present when it starts, then every change, with
//! no gaps and no duplicates.

use electric_core::collections::observable_map::{KeyEvent, ObservableMap};
use futures_util::StreamExt;

#[tokio::main]
async fn main() {
    let sessions = ObservableMap::<String, u32>::new();
    sessions.insert("alice".into(), 1);
    sessions.insert("bob".into(), 1);

    let mut keys = Box::pin(sessions.key_stream());
    let writer = {
        let sessions = sessions.clone();
        tokio::spawn(async move {
            sessions.insert("carol".into(), 1);
            sessions.insert("alice".into(), 1); // same value: no event
            sessions.insert("alice".into(), 2); // replaced
            sessions.remove(&"bob".to_owned());
            sessions.insert("end".into(), 0);
        })
    };
    while let Some(event) = keys.next().await {
        println!("{event:?}");
        if event == KeyEvent::Added("end".to_owned()) {
            break;
        }
    }
    let _ = writer.await;
    println!(
        "{} sessions, last modified {:?}",
        sessions.len(),
        sessions.last_modified()
    );
}
