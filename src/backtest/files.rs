//! File I/O of the replay and backtest paths, with polars: reading CSV and
//! Parquet, selecting the series, timestamp and value columns, sorting and
//! grouping by series, and writing the scored rows.
//!
//! polars stays off the live path: the window stage does the resampling in
//! both paths.

use std::path::{Path, PathBuf};

use polars::prelude::*;

/// Errors of the file path.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file type is not CSV or Parquet.
    #[error("{0}: unsupported file type (use .csv or .parquet)")]
    Format(PathBuf),
    /// Reading or writing failed.
    #[error("{path}")]
    Io {
        /// File.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// polars failed (missing column, bad type, ...).
    #[error("{path}")]
    Polars {
        /// File.
        path: PathBuf,
        /// Error.
        source: PolarsError,
    },
    /// A timestamp could not be read.
    #[error(
        "{path}: row {row}: bad timestamp {value:?} (epoch ms, RFC 3339 or YYYY-MM-DD HH:MM:SS)"
    )]
    Timestamp {
        /// File.
        path: PathBuf,
        /// 0-based row after sorting.
        row: usize,
        /// The value.
        value: String,
    },
    /// A value is missing or not a number.
    #[error("{path}: row {row}: missing or non-numeric value")]
    Value {
        /// File.
        path: PathBuf,
        /// 0-based row.
        row: usize,
    },
}

/// Which columns hold what.
#[derive(Debug, Clone)]
pub struct Columns {
    /// Series id column; `None`: the whole file is one series.
    pub series: Option<String>,
    /// Timestamp column.
    pub ts: String,
    /// Value column.
    pub value: String,
}

/// One series read from a file, in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    /// Series id.
    pub series: String,
    /// Timestamps, epoch ms, non-decreasing.
    pub ts: Vec<i64>,
    /// Values.
    pub values: Vec<f64>,
}

enum Kind {
    Csv,
    Parquet,
}

fn kind(path: &Path) -> Result<Kind, FileError> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("csv") => Ok(Kind::Csv),
        Some("parquet") | Some("pq") => Ok(Kind::Parquet),
        _ => Err(FileError::Format(path.to_path_buf())),
    }
}

fn pe(path: &Path) -> impl FnOnce(PolarsError) -> FileError + '_ {
    move |source| FileError::Polars {
        path: path.to_path_buf(),
        source,
    }
}

/// Read a CSV (with header) or Parquet file.
pub fn read_table(path: &Path) -> Result<DataFrame, FileError> {
    match kind(path)? {
        Kind::Csv => CsvReadOptions::default()
            .with_has_header(true)
            .try_into_reader_with_file_path(Some(path.to_path_buf()))
            .and_then(|r| r.finish())
            .map_err(pe(path)),
        Kind::Parquet => {
            let file = std::fs::File::open(path).map_err(|source| FileError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            ParquetReader::new(file).finish().map_err(pe(path))
        }
    }
}

/// Write `df` as CSV or Parquet, by the extension of `path`.
pub fn write_table(path: &Path, df: &mut DataFrame) -> Result<(), FileError> {
    let kind = kind(path)?;
    let file = std::fs::File::create(path).map_err(|source| FileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    match kind {
        Kind::Csv => CsvWriter::new(file)
            .include_header(true)
            .finish(df)
            .map_err(pe(path)),
        Kind::Parquet => ParquetWriter::new(file)
            .finish(df)
            .map(|_| ())
            .map_err(pe(path)),
    }
}

/// Timestamps of a column as epoch ms: integers are ms, strings are parsed
/// (epoch ms, RFC 3339, `YYYY-MM-DD HH:MM:SS` as UTC), datetimes converted.
fn timestamps(path: &Path, col: &Column) -> Result<Vec<i64>, FileError> {
    match col.dtype() {
        DataType::String => col
            .str()
            .map_err(pe(path))?
            .iter()
            .enumerate()
            .map(|(row, v)| {
                let v = v.unwrap_or_default();
                crate::tools::replay::parse_ts(v).ok_or_else(|| FileError::Timestamp {
                    path: path.to_path_buf(),
                    row,
                    value: v.to_string(),
                })
            })
            .collect(),
        DataType::Datetime(unit, _) => {
            let per_ms = match unit {
                TimeUnit::Milliseconds => 1,
                TimeUnit::Microseconds => 1_000,
                TimeUnit::Nanoseconds => 1_000_000,
            };
            let ints = col.cast(&DataType::Int64).map_err(pe(path))?;
            int_column(path, &ints).map(|v| v.into_iter().map(|t| t.div_euclid(per_ms)).collect())
        }
        _ => {
            let ints = col.cast(&DataType::Int64).map_err(pe(path))?;
            int_column(path, &ints)
        }
    }
}

fn int_column(path: &Path, col: &Column) -> Result<Vec<i64>, FileError> {
    col.i64()
        .map_err(pe(path))?
        .iter()
        .enumerate()
        .map(|(row, v)| {
            v.ok_or_else(|| FileError::Timestamp {
                path: path.to_path_buf(),
                row,
                value: "null".into(),
            })
        })
        .collect()
}

/// Select the columns, sort by (series, time) and split into series.
/// `default_series` names the series when the file has no series column.
pub fn read_series(
    path: &Path,
    cols: &Columns,
    default_series: &str,
) -> Result<Vec<SeriesData>, FileError> {
    let df = read_table(path)?;
    let mut names = vec![cols.ts.as_str(), cols.value.as_str()];
    if let Some(s) = &cols.series {
        names.push(s.as_str());
    }
    let mut df = df.select(names).map_err(pe(path))?;
    // A numeric time key for sorting, whatever the column's type.
    let ts = timestamps(path, df.column(&cols.ts).map_err(pe(path))?)?;
    df.with_column(Column::new("__ts_ms".into(), ts))
        .map_err(pe(path))?;
    let mut by = vec!["__ts_ms"];
    if let Some(s) = &cols.series {
        by.insert(0, s.as_str());
    }
    let df = df
        .sort(by, SortMultipleOptions::default().with_maintain_order(true))
        .map_err(pe(path))?;
    let groups = match &cols.series {
        Some(s) => df
            .partition_by_stable([s.as_str()], true)
            .map_err(pe(path))?,
        None => vec![df],
    };
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        let series = match &cols.series {
            Some(s) => {
                let c = g
                    .column(s)
                    .map_err(pe(path))?
                    .cast(&DataType::String)
                    .map_err(pe(path))?;
                c.str()
                    .map_err(pe(path))?
                    .get(0)
                    .unwrap_or_default()
                    .to_string()
            }
            None => default_series.to_string(),
        };
        let ts = int_column(path, g.column("__ts_ms").map_err(pe(path))?)?;
        let values: Vec<f64> = g
            .column(&cols.value)
            .map_err(pe(path))?
            .cast(&DataType::Float64)
            .map_err(pe(path))?
            .f64()
            .map_err(pe(path))?
            .iter()
            .enumerate()
            .map(|(row, v)| {
                v.ok_or(FileError::Value {
                    path: path.to_path_buf(),
                    row,
                })
            })
            .collect::<Result<_, _>>()?;
        out.push(SeriesData { series, ts, values });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_csv_with_a_series_column_sorted_and_grouped() {
        let dir = std::env::temp_dir().join(format!("attnwatch-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("multi.csv");
        std::fs::write(
            &p,
            "host,time,cpu\nb,2024-01-01 00:01:00,2\na,2024-01-01 00:01:00,1.5\na,2024-01-01 00:00:00,1\nb,2024-01-01 00:00:00,3\n",
        )
        .unwrap();
        let cols = Columns {
            series: Some("host".into()),
            ts: "time".into(),
            value: "cpu".into(),
        };
        let s = read_series(&p, &cols, "x").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].series, "a");
        assert_eq!(s[0].values, vec![1.0, 1.5]);
        assert_eq!(s[0].ts[1] - s[0].ts[0], 60_000);
        assert_eq!(s[1].values, vec![3.0, 2.0]);

        // Round trip through Parquet.
        let mut df = read_table(&p).unwrap();
        let pq = dir.join("multi.parquet");
        write_table(&pq, &mut df).unwrap();
        assert_eq!(read_series(&pq, &cols, "x").unwrap(), s);

        let bad = dir.join("bad.csv");
        std::fs::write(&bad, "time,cpu\nyesterday,1\n").unwrap();
        let cols = Columns {
            series: None,
            ts: "time".into(),
            value: "cpu".into(),
        };
        let e = read_series(&bad, &cols, "x").unwrap_err();
        assert!(e.to_string().contains("bad timestamp"), "{e}");
        assert!(matches!(
            read_table(&dir.join("x.txt")),
            Err(FileError::Format(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
