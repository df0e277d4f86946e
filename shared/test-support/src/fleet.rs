//! A generated fleet for tests and benchmarks at cluster size: the real DCGM export's rows
//! repeated for as many GPUs as asked, each copy of a GPU with a fresh UUID and host name, written
//! as a CSV at run time (never committed). The row order is the real file's, metric by metric
//! over the whole fleet, so a batch of consecutive rows covers as many GPUs as it has rows.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::split_mix::SplitMix;
use crate::testdata::{testdata, REAL_CSV};

/// GPUs of the real export, which a fleet repeats.
pub const REAL_GPUS: usize = 247;

/// A fleet CSV on disk and what it holds.
#[derive(Debug)]
pub struct Fleet {
    /// The CSV (in the directory the fleet was written to).
    pub path: PathBuf,
    /// GPUs in the file.
    pub gpus: usize,
    /// Data rows in the file: one sample each.
    pub rows: usize,
    /// Distinct host names.
    pub hosts: usize,
}

/// Columns of the export that name a GPU and its host.
const UUID_COLUMN: usize = 4;
const HOSTNAME_COLUMN: usize = 6;
const LABELS_COLUMN: usize = 11;

impl Fleet {
    /// Writes a fleet of `gpus` GPUs (any number; the real file's 247 GPUs repeated, the last
    /// copy cut short) to `dir/fleet-{gpus}.csv`. The same `seed` gives the same file.
    pub fn generate(dir: &Path, gpus: usize, seed: u64) -> Fleet {
        let mut reader = csv::Reader::from_path(testdata(REAL_CSV)).expect("open the real CSV");
        let header = reader.headers().expect("the real CSV's header").clone();
        let rows: Vec<csv::StringRecord> = reader
            .records()
            .map(|r| r.expect("a row of the real CSV"))
            .collect();
        let mut originals: Vec<String> = rows.iter().map(|r| r[UUID_COLUMN].to_string()).collect();
        originals.sort();
        originals.dedup();
        assert_eq!(originals.len(), REAL_GPUS, "GPUs in the real CSV");
        let copies = gpus.div_ceil(REAL_GPUS);
        // Copy `c` of original GPU `g` is fleet GPU `c * 247 + g`; the last copy stops at `gpus`.
        let mut random = SplitMix::new(seed);
        let mut renamed: BTreeMap<(usize, &str), String> = BTreeMap::new();
        for copy in 0..copies {
            for (g, original) in originals.iter().enumerate() {
                if copy * REAL_GPUS + g < gpus {
                    renamed.insert((copy, original.as_str()), fresh_uuid(&mut random));
                }
            }
        }
        let path = dir.join(format!("fleet-{gpus}.csv"));
        let file = std::fs::File::create(&path).expect("create the fleet CSV");
        let mut writer = csv::Writer::from_writer(std::io::BufWriter::new(file));
        writer.write_record(&header).expect("write the header");
        let mut written = 0;
        let mut hosts = std::collections::BTreeSet::new();
        for row in &rows {
            for copy in 0..copies {
                let original = &row[UUID_COLUMN];
                let Some(uuid) = renamed.get(&(copy, original)) else {
                    continue;
                };
                let host = format!("{}-f{copy:04}", &row[HOSTNAME_COLUMN]);
                let labels = row[LABELS_COLUMN]
                    .replace(original, uuid)
                    .replace(&row[HOSTNAME_COLUMN], &host);
                let fields: Vec<&str> = (0..row.len())
                    .map(|i| match i {
                        UUID_COLUMN => uuid.as_str(),
                        HOSTNAME_COLUMN => host.as_str(),
                        LABELS_COLUMN => labels.as_str(),
                        _ => &row[i],
                    })
                    .collect();
                writer.write_record(&fields).expect("write a row");
                hosts.insert(host);
                written += 1;
            }
        }
        writer
            .into_inner()
            .map_err(|e| e.to_string())
            .and_then(|mut w| w.flush().map_err(|e| e.to_string()))
            .expect("flush the fleet CSV");
        Fleet {
            path,
            gpus: renamed.len(),
            rows: written,
            hosts: hosts.len(),
        }
    }
}

/// A UUID in DCGM's form, `GPU-` and 32 hex digits in groups of 8-4-4-4-12.
fn fresh_uuid(random: &mut SplitMix) -> String {
    let hex = format!("{:016x}{:016x}", random.next_u64(), random.next_u64());
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_has_the_gpus_and_rows_asked_for_with_fresh_names() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = Fleet::generate(dir.path(), 500, 7);
        assert_eq!((fleet.gpus, fleet.rows), (500, 5_000));
        assert!(
            (62..93).contains(&fleet.hosts),
            "two whole copies of 31 hosts, then part of one"
        );
        let mut reader = csv::Reader::from_path(&fleet.path).unwrap();
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 5_000);
        let uuids: std::collections::BTreeSet<&str> =
            rows.iter().map(|r| &r[UUID_COLUMN]).collect();
        assert_eq!(uuids.len(), 500);
        assert!(uuids.iter().all(|u| u.len() == 40 && u.starts_with("GPU-")));
        // The labels name the GPU's new UUID and host.
        for row in &rows {
            assert!(row[LABELS_COLUMN].contains(&row[UUID_COLUMN]));
            assert!(row[LABELS_COLUMN].contains(&format!("Hostname=\"{}\"", &row[HOSTNAME_COLUMN])));
        }
        // Metric by metric over the fleet, as the real file is.
        assert!(rows[..500].iter().all(|r| r[1] == rows[0][1]));
        let other = tempfile::tempdir().unwrap();
        let again = Fleet::generate(other.path(), 500, 7);
        assert_eq!(
            std::fs::read(&again.path).unwrap(),
            std::fs::read(&fleet.path).unwrap(),
            "the same seed, the same fleet"
        );
    }
}
