//! `--max-load` / `--critical-load` thresholds: `Threads_running=25,Threads_connected=500`, as
//! gh-ost writes them. On PostgreSQL the names are the server's own counts (see
//! `postgres::probe`), with `Threads_running` standing for active backends so a gh-ost runbook
//! works unchanged.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Loads(Vec<(String, u64)>);

impl Loads {
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(n, v)| (n.as_str(), *v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for Loads {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut loads = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| {
                format!("`{part}`: write a load as name=threshold, e.g. Threads_running=25")
            })?;
            let name = name.trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`{name}` is not a status variable name (letters, digits and _)"
                ));
            }
            let value: u64 = value.trim().parse().map_err(|_| {
                format!("`{part}`: the threshold must be a whole number, e.g. {name}=25")
            })?;
            if value == 0 {
                return Err(format!(
                    "`{part}`: a threshold of 0 would hold the run forever; give a positive number"
                ));
            }
            loads.push((name.to_string(), value));
        }
        Ok(Loads(loads))
    }
}

impl fmt::Display for Loads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(n, v)| format!("{n}={v}")).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gh_ost_syntax() {
        let l: Loads = "Threads_running=25, Threads_connected=500".parse().unwrap();
        assert_eq!(l.to_string(), "Threads_running=25,Threads_connected=500");
        assert!("".parse::<Loads>().unwrap().is_empty());
        assert!("Threads_running".parse::<Loads>().is_err());
        assert!("Threads_running=x".parse::<Loads>().is_err());
        assert!("Threads_running=0".parse::<Loads>().is_err());
        assert!("a;b=1".parse::<Loads>().is_err());
    }
}
