//! `meridian dump-log`: what a partition's files hold, read straight from disk
//! (Kafka's `kafka-dump-log.sh`). For looking into a log without a broker, or beside
//! a running one: who wrote each batch (producer id, epoch and sequences), under
//! which leader epoch, compressed how, and whether it is intact; what its indexes
//! point at; which producers a snapshot of idempotent producers' state remembers.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use meridian_log::{
    inspect_offset_index, inspect_producer_snapshot, inspect_segment, inspect_time_index, FileKind,
    InspectedBatch, LogError, SegmentProblem,
};
use meridian_wire::batch::{decode_records, BatchHeader, Record};

use crate::json_bytes;

#[derive(clap::Args, Debug)]
pub struct DumpLogArgs {
    /// Segment files (`*.log`), their indexes (`*.index`, `*.timeindex`), snapshots
    /// of idempotent producers (`*.snapshot`), or partition directories
    /// (`DATA_DIR/topics/TOPIC/PARTITION`), whose segments are read in offset order.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Print each batch's records too (decompressed).
    #[arg(long, short)]
    records: bool,
    /// One JSON object per line: a batch (an index entry, a producer), or a problem
    /// found.
    #[arg(long)]
    json: bool,
}

/// Dumps every file `args` names. Damage (a bad CRC, a torn batch or entry, offsets
/// going back) is printed where it starts and makes the command fail once every file
/// is read; the rest of that file is not read.
pub fn run(args: DumpLogArgs) -> anyhow::Result<()> {
    let mut files = Vec::new();
    for path in &args.paths {
        files.extend(files_in(path)?);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut damaged = Vec::new();
    for file in &files {
        if !args.json {
            writeln!(out, "{}", file.display())?;
        }
        let problem = match FileKind::of(file) {
            FileKind::Segment => dump_segment(&mut out, file, &args)?,
            FileKind::OffsetIndex => {
                let found = inspect_offset_index(file).with_context(|| reading(file))?;
                for e in &found.entries {
                    let fields = [("offset", e.offset), ("position", i64::from(e.position))];
                    print_entry(&mut out, file, &fields, args.json)?;
                }
                found.problem
            }
            FileKind::TimeIndex => {
                let found = inspect_time_index(file).with_context(|| reading(file))?;
                for e in &found.entries {
                    let fields = [("timestamp", e.timestamp), ("offset", e.offset)];
                    print_entry(&mut out, file, &fields, args.json)?;
                }
                found.problem
            }
            FileKind::ProducerSnapshot => dump_snapshot(&mut out, file, args.json)?,
        };
        if let Some(problem) = problem {
            print_problem(&mut out, file, &problem, args.json)?;
            damaged.push(format!(
                "{} at byte {}: {}",
                file.display(),
                problem.position,
                problem.detail
            ));
        }
    }
    out.flush()?;
    match damaged.as_slice() {
        [] => Ok(()),
        [one] => anyhow::bail!("damaged file: {one}"),
        many => anyhow::bail!(
            "{} damaged files (each shown above), the first {}",
            many.len(),
            many[0]
        ),
    }
}

/// An index entry: `  NAME VALUE NAME VALUE`, or a JSON object of them and the file.
fn print_entry(
    out: &mut impl Write,
    file: &Path,
    fields: &[(&str, i64)],
    json: bool,
) -> std::io::Result<()> {
    if json {
        let mut object = serde_json::Map::new();
        object.insert("file".into(), file.display().to_string().into());
        for (name, value) in fields {
            object.insert((*name).into(), (*value).into());
        }
        return writeln!(out, "{}", serde_json::Value::Object(object));
    }
    let line: Vec<String> = fields.iter().map(|(n, v)| format!("{n} {v}")).collect();
    writeln!(out, "  {}", line.join(" "))
}

fn reading(file: &Path) -> String {
    format!("reading {}", file.display())
}

/// Prints a segment's batches; returns where it is damaged, if it is.
fn dump_segment(
    out: &mut impl Write,
    file: &Path,
    args: &DumpLogArgs,
) -> anyhow::Result<Option<SegmentProblem>> {
    let mut failed = None;
    let problem = inspect_segment(file, |batch| {
        if failed.is_none() {
            if let Err(e) = print_batch(out, file, &batch, args) {
                failed = Some(e);
            }
        }
    })
    .with_context(|| reading(file))?;
    match failed {
        Some(e) => Err(e),
        None => Ok(problem),
    }
}

/// Prints each producer of a snapshot; a damaged snapshot is reported, not read.
fn dump_snapshot(
    out: &mut impl Write,
    file: &Path,
    json: bool,
) -> anyhow::Result<Option<SegmentProblem>> {
    let producers = match inspect_producer_snapshot(file) {
        Ok(producers) => producers,
        Err(LogError::Corrupt {
            position, detail, ..
        }) => return Ok(Some(SegmentProblem { position, detail })),
        Err(e) => return Err(e).with_context(|| reading(file)),
    };
    for p in &producers {
        if json {
            let batches: Vec<serde_json::Value> = p
                .batches
                .iter()
                .map(|b| {
                    serde_json::json!({
                        "first_sequence": b.first_seq,
                        "last_sequence": b.last_seq,
                        "base_offset": b.base_offset,
                        "last_offset": b.last_offset,
                    })
                })
                .collect();
            let object = serde_json::json!({
                "file": file.display().to_string(),
                "producer_id": p.producer_id,
                "producer_epoch": p.epoch,
                "last_timestamp": p.last_timestamp,
                "batches": batches,
            });
            writeln!(out, "{object}")?;
        } else {
            let batches: Vec<String> = p
                .batches
                .iter()
                .map(|b| {
                    format!(
                        "sequences {}..={} at offsets {}..={}",
                        b.first_seq, b.last_seq, b.base_offset, b.last_offset
                    )
                })
                .collect();
            writeln!(
                out,
                "  producer {} epoch {} last_timestamp {}: {}",
                p.producer_id,
                p.epoch,
                p.last_timestamp,
                batches.join(", ")
            )?;
        }
    }
    Ok(None)
}

/// `path` if it is a file, else the segments (`*.log`) in it, by base offset.
fn files_in(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).with_context(|| format!("{}", path.display()))? {
        let entry = entry?;
        let name = entry.path();
        if name.extension().is_some_and(|e| e == "log") && entry.file_type()?.is_file() {
            files.push(name);
        }
    }
    // Segment names are base offsets padded to 20 digits: by name is by offset.
    files.sort();
    anyhow::ensure!(
        !files.is_empty(),
        "no segment files (*.log) in {}: give a partition's directory \
         (DATA_DIR/topics/TOPIC/PARTITION) or segment files",
        path.display()
    );
    Ok(files)
}

fn print_batch(
    out: &mut impl Write,
    file: &Path,
    batch: &InspectedBatch,
    args: &DumpLogArgs,
) -> anyhow::Result<()> {
    let h = &batch.header;
    let compression = h
        .compression()
        .map_or_else(|e| e.to_string(), |c| c.name().to_string());
    // A CRC-checked batch a client compressed badly still prints; its records say why not.
    let records = args
        .records
        .then(|| decode_records(h, &batch.bytes).map_err(|e| e.to_string()));
    if args.json {
        let mut object = serde_json::json!({
            "file": file.display().to_string(),
            "position": batch.position,
            "base_offset": h.base_offset,
            "last_offset": h.last_offset(),
            "count": h.records_count,
            "size": h.total_len(),
            "partition_leader_epoch": h.partition_leader_epoch,
            "producer_id": h.producer_id,
            "producer_epoch": h.producer_epoch,
            "base_sequence": h.base_sequence,
            "compression": compression,
            "transactional": h.is_transactional(),
            "control": h.is_control(),
            "base_timestamp": h.base_timestamp,
            "max_timestamp": h.max_timestamp,
            "crc": format!("{:#010x}", h.crc),
        });
        match records {
            Some(Ok(records)) => {
                object["records"] = records.iter().map(record_json).collect();
            }
            Some(Err(e)) => object["records_error"] = e.into(),
            None => {}
        }
        writeln!(out, "{object}")?;
        return Ok(());
    }
    write!(
        out,
        "  offsets {}..={} records {} position {} size {} leader_epoch {} ",
        h.base_offset,
        h.last_offset(),
        h.records_count,
        batch.position,
        h.total_len(),
        h.partition_leader_epoch,
    )?;
    write_producer(out, h)?;
    writeln!(
        out,
        " compression {compression}{}{} max_timestamp {}",
        if h.is_transactional() {
            " transactional"
        } else {
            ""
        },
        if h.is_control() { " control" } else { "" },
        h.max_timestamp,
    )?;
    match records {
        Some(Ok(records)) => {
            for r in &records {
                writeln!(
                    out,
                    "    {} timestamp {} key {} value {}{}",
                    r.offset,
                    r.timestamp,
                    shown(&r.key),
                    shown(&r.value),
                    r.headers
                        .iter()
                        .map(|header| format!(" {}={}", header.key, shown(&header.value)))
                        .collect::<String>()
                )?;
            }
        }
        Some(Err(e)) => writeln!(out, "    records not readable: {e}")?,
        None => {}
    }
    Ok(())
}

/// `producer ID epoch E sequences A..=B`, or `producer none` for a batch from a
/// producer without idempotence.
fn write_producer(out: &mut impl Write, h: &BatchHeader) -> std::io::Result<()> {
    if h.producer_id < 0 {
        return write!(out, "producer none");
    }
    // Sequences wrap after i32::MAX, as the broker counts them.
    let last =
        (i64::from(h.base_sequence) + i64::from(h.last_offset_delta)) % (i64::from(i32::MAX) + 1);
    write!(
        out,
        "producer {} epoch {} sequences {}..={last}",
        h.producer_id, h.producer_epoch, h.base_sequence
    )
}

fn print_problem(
    out: &mut impl Write,
    file: &Path,
    problem: &SegmentProblem,
    json: bool,
) -> std::io::Result<()> {
    if json {
        let object = serde_json::json!({
            "file": file.display().to_string(),
            "position": problem.position,
            "problem": problem.detail,
        });
        writeln!(out, "{object}")
    } else {
        writeln!(
            out,
            "  damaged at byte {}: {} (the rest of this file is not read)",
            problem.position, problem.detail
        )
    }
}

fn record_json(r: &Record) -> serde_json::Value {
    let headers: serde_json::Map<String, serde_json::Value> = r
        .headers
        .iter()
        .map(|h| (h.key.clone(), json_bytes::to_json(&h.value)))
        .collect();
    serde_json::json!({
        "offset": r.offset,
        "timestamp": r.timestamp,
        "key": json_bytes::to_json(&r.key),
        "value": json_bytes::to_json(&r.value),
        "headers": headers,
    })
}

/// Bytes as text with anything unprintable escaped (`\xff`, `\n`); `null` for none.
fn shown(bytes: &Option<bytes::Bytes>) -> String {
    match bytes {
        None => "null".to_string(),
        Some(b) => b.escape_ascii().to_string(),
    }
}
