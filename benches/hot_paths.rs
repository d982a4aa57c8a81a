//! The inner loops of replay: decoding a pgoutput row, rendering a binlog row as SQL, and
//! building the batched statements the MySQL applier sends. `cargo bench` shows regressions.

use std::hint::black_box;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mysql_async::Value;
use swivel::mysql::apply::{Change, Statements};
use swivel::mysql::inspect::{Column, TableInfo};
use swivel::mysql::shadow::ShadowInfo;
use swivel::mysql::values::Kind;
use swivel::mysql::Names;
use swivel::postgres::pgoutput;

/// A row in sysbench's shape: id, k, c char(120), pad char(60).
fn sbtest_texts(id: u32) -> [String; 4] {
    [
        id.to_string(),
        (id * 7).to_string(),
        format!("{id:0>120}"),
        format!("{id:0>60}"),
    ]
}

/// A pgoutput Insert message carrying one sbtest row in text format.
fn pgoutput_insert(id: u32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'I');
    b.put_u32(16384);
    b.put_u8(b'N');
    let values = sbtest_texts(id);
    b.put_i16(values.len() as i16);
    for v in &values {
        b.put_u8(b't');
        b.put_u32(v.len() as u32);
        b.put_slice(v.as_bytes());
    }
    b.freeze()
}

fn binlog_row(id: i64) -> Vec<Value> {
    let [_, _, c, pad] = sbtest_texts(id as u32);
    vec![
        Value::Int(id),
        Value::Int(id * 7),
        Value::Bytes(c.into_bytes()),
        Value::Bytes(pad.into_bytes()),
    ]
}

fn sbtest_table() -> (TableInfo, ShadowInfo) {
    let col = |name: &str, kind| Column {
        name: name.into(),
        kind,
        generated: false,
    };
    let table = TableInfo {
        columns: vec![
            col("id", Kind::Int),
            col("k", Kind::Int),
            col("c", Kind::Bytes),
            col("pad", Kind::Bytes),
        ],
        key: vec![0],
    };
    let shadow = ShadowInfo {
        sources: vec![0, 1, 2, 3],
        targets: ["id", "k", "c", "pad"].map(String::from).to_vec(),
    };
    (table, shadow)
}

fn decoding(c: &mut Criterion) {
    let messages: Vec<Bytes> = (0..1000).map(pgoutput_insert).collect();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.bench_function("pgoutput insert, 1000 sbtest rows", |b| {
        b.iter(|| {
            for m in &messages {
                black_box(pgoutput::decode(black_box(m.clone())).ok());
            }
        })
    });
    let rows: Vec<Vec<Value>> = (0..1000).map(binlog_row).collect();
    let kinds = [Kind::Int, Kind::Int, Kind::Bytes, Kind::Bytes];
    group.bench_function("binlog row to SQL literals, 1000 sbtest rows", |b| {
        let mut sql = String::with_capacity(1 << 20);
        b.iter(|| {
            sql.clear();
            for row in &rows {
                for (kind, v) in kinds.iter().zip(row) {
                    let v = kind.fix(v.clone());
                    kind.render(&v, &mut sql).ok();
                }
            }
            black_box(sql.len())
        })
    });
    group.finish();
}

fn statements(c: &mut Criterion) {
    let (table, shadow) = sbtest_table();
    let s = Statements::new(&Names::new("bench", "sbtest"), &table, &shadow);
    let upserts: Vec<Change> = (0..1000).map(|i| Change::Upsert(binlog_row(i))).collect();
    let mixed: Vec<Change> = (0..1000)
        .map(|i| {
            if i % 4 == 2 {
                Change::Delete(vec![Value::Int(i)])
            } else {
                Change::Upsert(binlog_row(i))
            }
        })
        .collect();
    let mut group = c.benchmark_group("apply statements");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("MySQL batch of 1000 upserts", |b| {
        b.iter(|| black_box(s.build(black_box(&upserts)).ok()))
    });
    group.bench_function("MySQL batch of 1000 mixed changes", |b| {
        b.iter(|| black_box(s.build(black_box(&mixed)).ok()))
    });
    group.finish();
}

criterion_group!(benches, decoding, statements);
criterion_main!(benches);
