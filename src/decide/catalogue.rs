//! The instance catalogue: types, vCPUs, memory and on-demand prices per region, read from a
//! CSV (`catalogue/aws-ec2.csv`, whose README cites its source).
//!
//! In: the CSV `instance_type,family,vcpu,memory_gib,arch,region,on_demand_usd_hour`.
//! Out: [`Catalogue`], which answers "what does this type cost here" and "which types fit".

use std::path::{Path, PathBuf};

/// Why a catalogue file cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("{}: cannot read the catalogue: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line of the file is wrong: `path:line: …`.
    #[error("{}:{source}", path.display())]
    Parse { path: PathBuf, source: ParseError },
}

/// What is wrong in catalogue text, and on which line (1 is the header).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("1: the header must be `{}`", HEADER.join(","))]
    Header,
    #[error("{line}: {cells} cells, expected {}", HEADER.len())]
    Cells { line: usize, cells: usize },
    #[error("{line}: {column} {value:?} is not a positive number")]
    NotPositive {
        line: usize,
        column: &'static str,
        value: String,
    },
    #[error("{line}: vcpu {vcpu} is not a whole number")]
    FractionalVcpu { line: usize, vcpu: f64 },
    /// Nothing after the header.
    #[error("2: the catalogue lists no instance type")]
    Empty,
}

impl ParseError {
    /// The line the error is on.
    pub fn line(&self) -> usize {
        match self {
            ParseError::Header => 1,
            ParseError::Empty => 2,
            ParseError::Cells { line, .. }
            | ParseError::NotPositive { line, .. }
            | ParseError::FractionalVcpu { line, .. } => *line,
        }
    }
}

/// One instance type in one region.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceType {
    pub name: String,
    pub family: String,
    pub vcpu: u32,
    pub memory_gib: f64,
    pub arch: String,
    pub region: String,
    /// Linux on-demand list price, USD per hour.
    pub on_demand: f64,
}

/// Every type of the catalogue file.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    pub types: Vec<InstanceType>,
}

const HEADER: [&str; 7] = [
    "instance_type",
    "family",
    "vcpu",
    "memory_gib",
    "arch",
    "region",
    "on_demand_usd_hour",
];

impl Catalogue {
    /// Reads a catalogue CSV; an error names the file, the line and what is wrong.
    pub fn load(path: &Path) -> Result<Catalogue, CatalogueError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogueError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Catalogue::parse(&text).map_err(|source| CatalogueError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Parses catalogue CSV text; an error starts with the line number.
    pub fn parse(text: &str) -> Result<Catalogue, ParseError> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let header: Vec<&str> = lines
            .next()
            .map(|(_, h)| h.split(',').map(str::trim).collect())
            .unwrap_or_default();
        if header != HEADER {
            return Err(ParseError::Header);
        }
        let mut types = Vec::new();
        for (i, line) in lines {
            let line_no = i + 1;
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            if cells.len() != HEADER.len() {
                return Err(ParseError::Cells {
                    line: line_no,
                    cells: cells.len(),
                });
            }
            let number = |k: usize| {
                cells[k]
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .ok_or_else(|| ParseError::NotPositive {
                        line: line_no,
                        column: HEADER[k],
                        value: cells[k].to_string(),
                    })
            };
            let vcpu = number(2)?;
            if vcpu.fract() != 0.0 {
                return Err(ParseError::FractionalVcpu {
                    line: line_no,
                    vcpu,
                });
            }
            types.push(InstanceType {
                name: cells[0].to_string(),
                family: cells[1].to_string(),
                vcpu: vcpu as u32,
                memory_gib: number(3)?,
                arch: cells[4].to_string(),
                region: cells[5].to_string(),
                on_demand: number(6)?,
            });
        }
        if types.is_empty() {
            return Err(ParseError::Empty);
        }
        Ok(Catalogue { types })
    }

    /// The type `name` in `region`.
    pub fn get(&self, name: &str, region: &str) -> Option<&InstanceType> {
        self.types
            .iter()
            .find(|t| t.name == name && t.region == region)
    }

    /// The types offered in `region`.
    pub fn in_region<'a>(&'a self, region: &'a str) -> impl Iterator<Item = &'a InstanceType> {
        self.types.iter().filter(move |t| t.region == region)
    }
}

/// The region of an availability zone (`us-east-1a` → `us-east-1`).
pub fn region_of(az: &str) -> &str {
    az.trim_end_matches(|c: char| c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_catalogue_loads_and_prices_types_per_region() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("catalogue/aws-ec2.csv");
        let c = Catalogue::load(&path).unwrap();
        let m5 = c.get("m5.large", "us-east-1").unwrap();
        assert_eq!((m5.vcpu, m5.memory_gib, m5.on_demand), (2, 8.0, 0.096));
        assert!(c.get("m5.large", "eu-west-1").unwrap().on_demand > m5.on_demand);
        assert!(c.in_region("us-east-1").count() >= 30);
    }

    #[test]
    fn a_bad_catalogue_names_the_line() {
        let bad = "instance_type,family,vcpu,memory_gib,arch,region,on_demand_usd_hour\n\
                   m5.large,m5,2,8,x86_64,us-east-1,free\n";
        let e = Catalogue::parse(bad).unwrap_err();
        assert_eq!(e.line(), 2);
        assert_eq!(
            e.to_string(),
            "2: on_demand_usd_hour \"free\" is not a positive number"
        );
        assert_eq!(
            Catalogue::parse("a,b\n").unwrap_err().to_string(),
            "1: the header must be \
             `instance_type,family,vcpu,memory_gib,arch,region,on_demand_usd_hour`"
        );
        let dir = std::env::temp_dir().join(format!("stratus-catalogue-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.csv");
        std::fs::write(&path, bad).unwrap();
        let e = Catalogue::load(&path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:2: on_demand_usd_hour \"free\" is not a positive number",
                path.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn zones_map_to_regions() {
        assert_eq!(region_of("us-east-1a"), "us-east-1");
        assert_eq!(region_of("eu-west-1"), "eu-west-1");
    }
}
