//! Logical dumps of redb databases, for backups taken while the node writes.
//!
//! A dump reads every table of a database inside one read transaction, so it is a
//! consistent image of one commit while writers go on (redb is MVCC: nothing is
//! paused), and writes it as a framed stream that a loader turns back into a fresh
//! database. Raw file copies are not consistent while redb commits (the header may
//! name pages the copy took before they were written), hence the logical form.
//!
//! The stream (all lengths little-endian):
//! ```text
//! 'T' u32 len, table name     a table starts
//! 'E' u32 len, key, u32 len, value   one entry, bytes as redb stores them
//! 'Z'                         the dump ends
//! ```
//! Keys and values travel as redb's own byte forms (`Key::as_bytes`), so one generic
//! function dumps and loads tables of any key and value type; the owner of a database
//! names its tables (it alone knows their types).

use redb::{Key, ReadableTable, TableDefinition, TableHandle, Value};
use std::io::{Read, Write};

/// Bounds what a reader allocates for one frame: a malformed stream gets an error,
/// never an allocation of whatever length it claims.
pub const MAX_FIELD: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("database: {0}")]
    Db(String),
    #[error("malformed dump: {0}")]
    Format(String),
}

pub type Result<T> = std::result::Result<T, DumpError>;

fn db(e: impl std::fmt::Display) -> DumpError {
    DumpError::Db(e.to_string())
}

/// Writes a length-prefixed field.
pub fn write_field(w: &mut impl Write, bytes: &[u8]) -> Result<()> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|l| (*l as usize) <= MAX_FIELD)
        .ok_or_else(|| DumpError::Format(format!("a field of {} bytes", bytes.len())))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(bytes)?;
    Ok(())
}

/// Reads a length-prefixed field of at most `max` bytes.
pub fn read_field(r: &mut impl Read, max: usize) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(truncated)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max.min(MAX_FIELD) {
        return Err(DumpError::Format(format!(
            "a field claims {len} bytes (at most {max})"
        )));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).map_err(truncated)?;
    Ok(buf)
}

/// Reads one tag byte.
pub fn read_tag(r: &mut impl Read) -> Result<u8> {
    let mut t = [0u8; 1];
    r.read_exact(&mut t).map_err(truncated)?;
    Ok(t[0])
}

fn truncated(e: std::io::Error) -> DumpError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        DumpError::Format("the stream ends in the middle of a dump".into())
    } else {
        DumpError::Io(e)
    }
}

/// Creates a new database at `path`, refusing one that exists (a load never merges
/// into or overwrites a database).
pub fn create_new(path: &std::path::Path) -> Result<redb::Database> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| {
            DumpError::Io(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            ))
        })?;
    let backend = redb::backends::FileBackend::new(file).map_err(db)?;
    redb::Database::builder()
        .create_with_backend(backend)
        .map_err(db)
}

/// Writes one table of `rtx` (keys in order). Returns the number of entries.
pub fn dump_table<K: Key + 'static, V: Value + 'static>(
    rtx: &redb::ReadTransaction,
    def: TableDefinition<K, V>,
    w: &mut impl Write,
) -> Result<u64> {
    w.write_all(b"T")?;
    write_field(w, def.name().as_bytes())?;
    let table = match rtx.open_table(def) {
        Ok(t) => t,
        // A table a database never created is empty.
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(db(e)),
    };
    let mut n = 0;
    for entry in table.iter().map_err(db)? {
        let (k, v) = entry.map_err(db)?;
        w.write_all(b"E")?;
        write_field(w, K::as_bytes(&k.value()).as_ref())?;
        write_field(w, V::as_bytes(&v.value()).as_ref())?;
        n += 1;
    }
    Ok(n)
}

/// Ends a dump.
pub fn end(w: &mut impl Write) -> Result<()> {
    w.write_all(b"Z")?;
    Ok(())
}

/// One frame of a dump as read back.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Table(String),
    Entry(Vec<u8>, Vec<u8>),
    End,
}

/// Reads the next frame.
pub fn next_frame(r: &mut impl Read) -> Result<Frame> {
    match read_tag(r)? {
        b'T' => String::from_utf8(read_field(r, 1024)?)
            .map(Frame::Table)
            .map_err(|_| DumpError::Format("a table name is not UTF-8".into())),
        b'E' => Ok(Frame::Entry(
            read_field(r, MAX_FIELD)?,
            read_field(r, MAX_FIELD)?,
        )),
        b'Z' => Ok(Frame::End),
        t => Err(DumpError::Format(format!("unknown frame tag {t:#04x}"))),
    }
}

/// Inserts one dumped entry into its typed table.
pub fn insert<K: Key + 'static, V: Value + 'static>(
    wtx: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
    key: &[u8],
    value: &[u8],
) -> Result<()> {
    check_width::<K>(key)?;
    check_width::<V>(value)?;
    let mut t = wtx.open_table(def).map_err(db)?;
    t.insert(K::from_bytes(key), V::from_bytes(value))
        .map_err(db)?;
    Ok(())
}

/// Bytes redb would panic on decoding: a fixed-width type from bytes of another
/// width, a string from bytes that are not UTF-8.
fn check_width<T: Value>(bytes: &[u8]) -> Result<()> {
    if T::type_name() == <&str as Value>::type_name() && std::str::from_utf8(bytes).is_err() {
        return Err(DumpError::Format("a text key or value is not UTF-8".into()));
    }
    match T::fixed_width() {
        Some(w) if w != bytes.len() => Err(DumpError::Format(format!(
            "a value of {} bytes where {} has {w}",
            bytes.len(),
            T::type_name().name()
        ))),
        _ => Ok(()),
    }
}

/// Loads a whole dump (up to its end frame) into `wtx`: `table` maps each table name
/// to an insert into its typed table, and refuses names it does not know.
pub fn load(
    r: &mut impl Read,
    wtx: &redb::WriteTransaction,
    mut table: impl FnMut(&redb::WriteTransaction, &str, &[u8], &[u8]) -> Result<()>,
) -> Result<u64> {
    let mut current: Option<String> = None;
    let mut n = 0;
    loop {
        match next_frame(r)? {
            Frame::Table(name) => current = Some(name),
            Frame::Entry(k, v) => {
                let name = current
                    .as_deref()
                    .ok_or_else(|| DumpError::Format("an entry before any table".into()))?;
                table(wtx, name, &k, &v)?;
                n += 1;
            }
            Frame::End => return Ok(n),
        }
    }
}

/// The error for a table name a loader does not know.
pub fn unknown_table(name: &str) -> DumpError {
    DumpError::Format(format!("unknown table {name:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableDatabase};

    const A: TableDefinition<u64, &[u8]> = TableDefinition::new("a");
    const B: TableDefinition<&str, (u32, u64)> = TableDefinition::new("b");
    const C: TableDefinition<[u8; 32], ()> = TableDefinition::new("c");

    fn loader(wtx: &redb::WriteTransaction, name: &str, k: &[u8], v: &[u8]) -> Result<()> {
        match name {
            "a" => insert(wtx, A, k, v),
            "b" => insert(wtx, B, k, v),
            "c" => insert(wtx, C, k, v),
            other => Err(unknown_table(other)),
        }
    }

    fn dump(db: &Database) -> Vec<u8> {
        let rtx = db.begin_read().unwrap();
        let mut out = Vec::new();
        dump_table(&rtx, A, &mut out).unwrap();
        dump_table(&rtx, B, &mut out).unwrap();
        dump_table(&rtx, C, &mut out).unwrap();
        end(&mut out).unwrap();
        out
    }

    #[test]
    fn tables_of_every_shape_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let src = Database::create(dir.path().join("src.redb")).unwrap();
        let w = src.begin_write().unwrap();
        {
            let mut a = w.open_table(A).unwrap();
            for i in 0..1000u64 {
                a.insert(i, &i.to_be_bytes().repeat(i as usize % 7)[..])
                    .unwrap();
            }
            w.open_table(B).unwrap().insert("x", (7, 9)).unwrap();
            w.open_table(C).unwrap().insert([3u8; 32], ()).unwrap();
        }
        w.commit().unwrap();
        let bytes = dump(&src);

        let dst = Database::create(dir.path().join("dst.redb")).unwrap();
        let w = dst.begin_write().unwrap();
        assert_eq!(load(&mut &bytes[..], &w, loader).unwrap(), 1002);
        w.commit().unwrap();
        assert_eq!(dump(&dst), bytes);
        let r = dst.begin_read().unwrap();
        assert_eq!(
            r.open_table(B).unwrap().get("x").unwrap().unwrap().value(),
            (7, 9)
        );
    }

    #[test]
    fn a_dump_is_one_commit_while_writers_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db.redb")).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(A).unwrap().insert(1, &b"one"[..]).unwrap();
        w.commit().unwrap();
        let rtx = db.begin_read().unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(A).unwrap().insert(2, &b"two"[..]).unwrap();
        w.commit().unwrap();
        let mut out = Vec::new();
        assert_eq!(dump_table(&rtx, A, &mut out).unwrap(), 1);
    }

    #[test]
    fn malformed_streams_are_refused_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db.redb")).unwrap();
        let w = db.begin_write().unwrap();
        let mut good = Vec::new();
        {
            let src = Database::create(dir.path().join("src.redb")).unwrap();
            let t = src.begin_write().unwrap();
            t.open_table(C).unwrap().insert([1u8; 32], ()).unwrap();
            t.commit().unwrap();
            let r = src.begin_read().unwrap();
            dump_table(&r, C, &mut good).unwrap();
            end(&mut good).unwrap();
        }
        // Truncated anywhere: an error, not a partial load reported as whole.
        for cut in 0..good.len() {
            assert!(load(&mut &good[..cut], &w, loader).is_err(), "cut at {cut}");
        }
        // A huge claimed length is refused before allocating it.
        let mut huge = b"T".to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            load(&mut &huge[..], &w, loader),
            Err(DumpError::Format(_))
        ));
        // A text key that is not UTF-8 (redb would panic decoding it).
        let mut text = b"T".to_vec();
        write_field(&mut text, b"b").unwrap();
        text.push(b'E');
        write_field(&mut text, &[0xff, 0xfe]).unwrap();
        write_field(&mut text, &[0u8; 12]).unwrap();
        assert!(matches!(
            load(&mut &text[..], &w, loader),
            Err(DumpError::Format(_))
        ));
        // A key of the wrong width for its table, an unknown table, an unknown tag.
        let mut bad = b"T".to_vec();
        write_field(&mut bad, b"c").unwrap();
        bad.push(b'E');
        write_field(&mut bad, &[1u8; 31]).unwrap();
        write_field(&mut bad, &[]).unwrap();
        assert!(load(&mut &bad[..], &w, loader).is_err());
        let mut unknown = b"T".to_vec();
        write_field(&mut unknown, b"nope").unwrap();
        unknown.push(b'E');
        write_field(&mut unknown, b"k").unwrap();
        write_field(&mut unknown, b"v").unwrap();
        assert!(load(&mut &unknown[..], &w, loader).is_err());
        assert!(load(&mut &b"Q"[..], &w, loader).is_err());
    }
}
