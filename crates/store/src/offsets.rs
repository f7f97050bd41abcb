//! The sink's consumed positions, stored in PostgreSQL in the same transaction as the rows.
//!
//! A writer remembers, per partition, the `next_offset` it resumed from (or last committed).
//! Committing a batch first locks those rows (`FOR UPDATE`) and checks that they still hold
//! what the writer expects: if another sink instance has written the partition since (a
//! rebalance it has not heard of yet, a zombie after a long pause), the check fails, the
//! transaction is rolled back, and the writer re-reads its positions. This fencing is what
//! keeps the rows exactly-once when two instances briefly both believe they own a partition.

use std::collections::HashMap;

use sqlx::PgConnection;

/// A partition of a topic.
pub type TopicPartition = (String, i32);

/// Reads the stored next offsets of `group` for `partitions` (absent when never written).
pub async fn load(
    conn: &mut PgConnection,
    group: &str,
    partitions: &[TopicPartition],
) -> Result<HashMap<TopicPartition, i64>, sqlx::Error> {
    let (topics, parts): (Vec<String>, Vec<i32>) = partitions.iter().cloned().unzip();
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT o.topic, o.partition, o.next_offset FROM sink_offsets o
         JOIN unnest($2::text[], $3::int4[]) AS w(topic, partition)
           ON o.topic = w.topic AND o.partition = w.partition
         WHERE o.consumer_group = $1",
    )
    .bind(group)
    .bind(&topics)
    .bind(&parts)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(t, p, o)| ((t, p), o)).collect())
}

/// Deletes the stored positions of `group` given in `positions` (each with the next offset it
/// must still hold: one another writer moved meanwhile is kept); returns those deleted. A
/// partition without a stored position starts at the beginning of what its topic holds.
pub async fn forget(
    conn: &mut PgConnection,
    group: &str,
    positions: &[(TopicPartition, i64)],
) -> Result<Vec<TopicPartition>, sqlx::Error> {
    let topics: Vec<&str> = positions.iter().map(|((t, _), _)| t.as_str()).collect();
    let parts: Vec<i32> = positions.iter().map(|((_, p), _)| *p).collect();
    let offsets: Vec<i64> = positions.iter().map(|(_, o)| *o).collect();
    let rows: Vec<(String, i32)> = sqlx::query_as(
        "DELETE FROM sink_offsets o
         USING unnest($2::text[], $3::int4[], $4::int8[]) AS w(topic, partition, next)
         WHERE o.consumer_group = $1 AND o.topic = w.topic AND o.partition = w.partition
           AND o.next_offset = w.next
         RETURNING o.topic, o.partition",
    )
    .bind(group)
    .bind(&topics)
    .bind(&parts)
    .bind(&offsets)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows)
}

/// One partition's move in a batch: from the offset the writer expects to be stored (`None`:
/// no row yet) to the next offset after the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    pub topic: String,
    pub partition: i32,
    pub expected: Option<i64>,
    pub next: i64,
}

/// Why a batch's offsets cannot be committed.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("{topic}[{partition}]: stored next offset is {stored:?}, this writer expected {expected:?}: another sink instance wrote it")]
    Fenced {
        topic: String,
        partition: i32,
        stored: Option<i64>,
        expected: Option<i64>,
    },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Locks and checks the rows of `advances` (call first in the batch's transaction).
pub async fn lock_and_check(
    tx: &mut PgConnection,
    group: &str,
    advances: &[Advance],
) -> Result<(), FenceError> {
    let keys: Vec<TopicPartition> = advances
        .iter()
        .map(|a| (a.topic.clone(), a.partition))
        .collect();
    let (topics, parts): (Vec<String>, Vec<i32>) = keys.into_iter().unzip();
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT o.topic, o.partition, o.next_offset FROM sink_offsets o
         JOIN unnest($2::text[], $3::int4[]) AS w(topic, partition)
           ON o.topic = w.topic AND o.partition = w.partition
         WHERE o.consumer_group = $1
         ORDER BY o.topic, o.partition
         FOR UPDATE OF o",
    )
    .bind(group)
    .bind(&topics)
    .bind(&parts)
    .fetch_all(&mut *tx)
    .await?;
    let stored: HashMap<(&str, i32), i64> =
        rows.iter().map(|(t, p, o)| ((t.as_str(), *p), *o)).collect();
    for a in advances {
        let s = stored.get(&(a.topic.as_str(), a.partition)).copied();
        if s != a.expected {
            return Err(FenceError::Fenced {
                topic: a.topic.clone(),
                partition: a.partition,
                stored: s,
                expected: a.expected,
            });
        }
    }
    Ok(())
}

/// Writes the new positions (after [`lock_and_check`], in the same transaction). New rows are
/// plain inserts: a concurrent writer inserting the same partition makes one of the two
/// transactions fail on the primary key instead of both succeeding.
pub async fn store(
    tx: &mut PgConnection,
    group: &str,
    advances: &[Advance],
) -> Result<(), sqlx::Error> {
    let (mut ut, mut up, mut un) = (Vec::new(), Vec::new(), Vec::new());
    let (mut it, mut ip, mut inx) = (Vec::new(), Vec::new(), Vec::new());
    for a in advances {
        if a.expected.is_some() {
            ut.push(a.topic.as_str());
            up.push(a.partition);
            un.push(a.next);
        } else {
            it.push(a.topic.as_str());
            ip.push(a.partition);
            inx.push(a.next);
        }
    }
    if !ut.is_empty() {
        sqlx::query(
            "UPDATE sink_offsets o SET next_offset = w.next, updated_at = now()
             FROM unnest($2::text[], $3::int4[], $4::int8[]) AS w(topic, partition, next)
             WHERE o.consumer_group = $1 AND o.topic = w.topic AND o.partition = w.partition",
        )
        .bind(group)
        .bind(&ut)
        .bind(&up)
        .bind(&un)
        .execute(&mut *tx)
        .await?;
    }
    if !it.is_empty() {
        sqlx::query(
            "INSERT INTO sink_offsets (consumer_group, topic, partition, next_offset)
             SELECT $1, w.topic, w.partition, w.next
             FROM unnest($2::text[], $3::int4[], $4::int8[]) AS w(topic, partition, next)",
        )
        .bind(group)
        .bind(&it)
        .bind(&ip)
        .bind(&inx)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
