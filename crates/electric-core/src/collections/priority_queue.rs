//! A bounded concurrent priority queue with levels, 0 the highest (the original's
//! `ConcurrentPriorityQueue<T>`).
//!
//! Items are kept in one FIFO bucket per level; a bitmap of non-empty levels makes
//! [`PriorityQueue::try_pop`] find the highest non-empty level in `levels / 64` word reads
//! instead of scanning every bucket (the original's dequeue was O(levels), with at most 100
//! levels; here up to [`MAX_LEVELS`]). Items of one level come out in push order.
//!
//! The queue is bounded: [`PriorityQueue::push`] waits for room, [`PriorityQueue::try_push`]
//! hands the item back. [`PriorityQueue::pop`] waits for an item.
//!
//! # Examples
//!
//! ```
//! use electric_core::collections::PriorityQueue;
//! let q = PriorityQueue::new(3, 100).unwrap();
//! q.try_push("low", 2).unwrap();
//! q.try_push("high", 0).unwrap();
//! assert_eq!(q.try_pop(), Some(("high", 0)));
//! assert_eq!(q.try_pop(), Some(("low", 2)));
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use tokio::sync::Notify;

use super::sync::{lock, Mutex};

/// Most levels a [`PriorityQueue`] can have.
pub const MAX_LEVELS: usize = 4096;

/// Errors of [`PriorityQueue::new`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PriorityQueueError {
    /// `levels` is zero or above [`MAX_LEVELS`].
    #[error("priority queue levels must be between 1 and {max}, got {levels}")]
    InvalidLevels {
        /// The requested number of levels.
        levels: usize,
        /// [`MAX_LEVELS`].
        max: usize,
    },
    /// `capacity` is zero.
    #[error("priority queue capacity must be at least 1")]
    ZeroCapacity,
}

/// Why a push was refused; the item is handed back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushError<T> {
    /// The priority is not below the number of levels.
    #[error("priority {priority} is out of range 0..{levels}")]
    OutOfRange {
        /// The item.
        item: T,
        /// The refused priority.
        priority: usize,
        /// The queue's number of levels.
        levels: usize,
    },
    /// The queue holds `capacity` items (only from [`PriorityQueue::try_push`]).
    #[error("priority queue is full")]
    Full(T),
}

struct State<T> {
    buckets: Vec<VecDeque<T>>,
    nonempty: Vec<u64>,
    len: usize,
}

impl<T> State<T> {
    fn first_level(&self) -> Option<usize> {
        self.nonempty
            .iter()
            .enumerate()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| i * 64 + w.trailing_zeros() as usize)
    }

    fn pop(&mut self) -> Option<(T, usize)> {
        let level = self.first_level()?;
        let bucket = &mut self.buckets[level];
        let item = bucket.pop_front()?;
        if bucket.is_empty() {
            self.nonempty[level / 64] &= !(1u64 << (level % 64));
        }
        self.len -= 1;
        Some((item, level))
    }
}

struct Inner<T> {
    state: Mutex<State<T>>,
    levels: usize,
    capacity: usize,
    not_empty: Notify,
    not_full: Notify,
}

/// A bounded multi-level priority queue; 0 is the highest priority. Cheap to clone (clones
/// share the queue).
pub struct PriorityQueue<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for PriorityQueue<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T> fmt::Debug for PriorityQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriorityQueue")
            .field("levels", &self.inner.levels)
            .field("capacity", &self.inner.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl<T> PriorityQueue<T> {
    /// A queue with priorities `0..levels` holding at most `capacity` items.
    ///
    /// # Errors
    ///
    /// [`PriorityQueueError::InvalidLevels`] or [`PriorityQueueError::ZeroCapacity`].
    pub fn new(levels: usize, capacity: usize) -> Result<Self, PriorityQueueError> {
        if levels == 0 || levels > MAX_LEVELS {
            return Err(PriorityQueueError::InvalidLevels {
                levels,
                max: MAX_LEVELS,
            });
        }
        if capacity == 0 {
            return Err(PriorityQueueError::ZeroCapacity);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    buckets: (0..levels).map(|_| VecDeque::new()).collect(),
                    nonempty: vec![0; levels.div_ceil(64)],
                    len: 0,
                }),
                levels,
                capacity,
                not_empty: Notify::new(),
                not_full: Notify::new(),
            }),
        })
    }

    /// Pushes `item` at `priority` without waiting.
    ///
    /// # Errors
    ///
    /// [`PushError::OutOfRange`] or [`PushError::Full`], with the item.
    pub fn try_push(&self, item: T, priority: usize) -> Result<(), PushError<T>> {
        if priority >= self.inner.levels {
            return Err(PushError::OutOfRange {
                item,
                priority,
                levels: self.inner.levels,
            });
        }
        {
            let mut st = lock(&self.inner.state);
            if st.len >= self.inner.capacity {
                return Err(PushError::Full(item));
            }
            st.buckets[priority].push_back(item);
            st.nonempty[priority / 64] |= 1u64 << (priority % 64);
            st.len += 1;
        }
        self.inner.not_empty.notify_one();
        Ok(())
    }

    /// Pushes `item` at `priority`, waiting for room.
    ///
    /// # Errors
    ///
    /// [`PushError::OutOfRange`], with the item.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled push did not queue the item.
    pub async fn push(&self, item: T, priority: usize) -> Result<(), PushError<T>> {
        let mut item = item;
        loop {
            let room = self.inner.not_full.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_push(item, priority) {
                Err(PushError::Full(back)) => item = back,
                other => return other,
            }
            room.await;
        }
    }

    /// Removes the highest-priority item (the oldest of its level) with its priority.
    pub fn try_pop(&self) -> Option<(T, usize)> {
        let popped = lock(&self.inner.state).pop();
        if popped.is_some() {
            self.inner.not_full.notify_one();
        }
        popped
    }

    /// Removes the highest-priority item, waiting for one.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled pop removed nothing, and a wake-up it received passes to
    /// another waiter.
    pub async fn pop(&self) -> (T, usize) {
        loop {
            let item = self.inner.not_empty.notified();
            tokio::pin!(item);
            item.as_mut().enable();
            if let Some(found) = self.try_pop() {
                return found;
            }
            item.await;
        }
    }

    /// The priority of the item [`PriorityQueue::try_pop`] would return.
    pub fn peek_priority(&self) -> Option<usize> {
        lock(&self.inner.state).first_level()
    }

    /// Removes every item, highest priority first.
    pub fn drain(&self) -> Vec<(T, usize)> {
        let mut out = Vec::new();
        {
            let mut st = lock(&self.inner.state);
            while let Some(x) = st.pop() {
                out.push(x);
            }
        }
        self.inner.not_full.notify_waiters();
        out
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        lock(&self.inner.state).len
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of priority levels.
    pub fn levels(&self) -> usize {
        self.inner.levels
    }
}

#[cfg(all(test, not(electric_loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bad_config_and_out_of_range() {
        assert_eq!(
            PriorityQueue::<u8>::new(0, 1).err(),
            Some(PriorityQueueError::InvalidLevels {
                levels: 0,
                max: MAX_LEVELS
            })
        );
        assert!(PriorityQueue::<u8>::new(MAX_LEVELS + 1, 1).is_err());
        assert_eq!(
            PriorityQueue::<u8>::new(1, 0).err(),
            Some(PriorityQueueError::ZeroCapacity)
        );
        let q = PriorityQueue::new(4, 2).expect("new");
        assert_eq!(
            q.try_push('a', 4),
            Err(PushError::OutOfRange {
                item: 'a',
                priority: 4,
                levels: 4
            })
        );
        q.try_push('a', 3).expect("push");
        q.try_push('b', 3).expect("push");
        assert_eq!(q.try_push('c', 0), Err(PushError::Full('c')));
    }

    #[test]
    fn order_by_level_then_fifo_across_words() {
        let q = PriorityQueue::new(200, 100).expect("new");
        for (i, p) in [150usize, 3, 70, 3, 199, 0, 70].into_iter().enumerate() {
            q.try_push(i, p).expect("push");
        }
        assert_eq!(q.peek_priority(), Some(0));
        let got: Vec<_> = q.drain();
        assert_eq!(
            got,
            vec![(5, 0), (1, 3), (3, 3), (2, 70), (6, 70), (0, 150), (4, 199)]
        );
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn pop_waits_and_push_waits_for_room() {
        let q = PriorityQueue::new(2, 1).expect("new");
        let q2 = q.clone();
        let popper = tokio::spawn(async move { q2.pop().await });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!popper.is_finished());
        q.push(9u32, 1).await.expect("push");
        assert_eq!(popper.await.expect("join"), (9, 1));

        q.push(1, 0).await.expect("push");
        let q3 = q.clone();
        let pusher = tokio::spawn(async move { q3.push(2, 0).await });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!pusher.is_finished(), "full: push waits");
        assert_eq!(q.pop().await, (1, 0));
        pusher.await.expect("join").expect("push");
        assert_eq!(q.try_pop(), Some((2, 0)));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_pop_does_not_lose_items() {
        let q = PriorityQueue::new(1, 4).expect("new");
        let r = tokio::time::timeout(Duration::from_millis(5), q.pop()).await;
        assert!(r.is_err());
        q.try_push(1u8, 0).expect("push");
        assert_eq!(q.pop().await, (1, 0));
    }
}
