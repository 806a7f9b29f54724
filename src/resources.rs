//! `Resources`, `Mem` and `Cpu`: what a process reserves, and how the amounts read and parse.

use serde::{Deserialize, Serialize};
use std::{fmt, ops, str::FromStr};

/// An amount of memory in bytes.
///
/// # Examples
/// ```
/// use constellation::Mem;
/// assert_eq!(20 * Mem::MIB, Mem::from_bytes(20 << 20));
/// assert_eq!("1.5 GiB".parse::<Mem>().unwrap(), Mem::from_bytes(3 << 29));
/// assert_eq!((100 * Mem::MIB).to_string(), "100 MiB");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Mem(u64);

impl Mem {
    /// One byte.
    pub const B: Mem = Mem(1);
    /// One kibibyte (1024 bytes).
    pub const KIB: Mem = Mem(1 << 10);
    /// One mebibyte.
    pub const MIB: Mem = Mem(1 << 20);
    /// One gibibyte.
    pub const GIB: Mem = Mem(1 << 30);
    /// One tebibyte.
    pub const TIB: Mem = Mem(1 << 40);

    /// The amount of `bytes` bytes.
    pub const fn from_bytes(bytes: u64) -> Mem {
        Mem(bytes)
    }

    /// The amount in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl ops::Mul<Mem> for u64 {
    type Output = Mem;
    fn mul(self, rhs: Mem) -> Mem {
        Mem(self.saturating_mul(rhs.0))
    }
}

impl ops::Mul<u64> for Mem {
    type Output = Mem;
    fn mul(self, rhs: u64) -> Mem {
        Mem(self.0.saturating_mul(rhs))
    }
}

impl ops::Div<u64> for Mem {
    type Output = Mem;
    fn div(self, rhs: u64) -> Mem {
        Mem(self.0 / rhs)
    }
}

impl ops::Add for Mem {
    type Output = Mem;
    fn add(self, rhs: Mem) -> Mem {
        Mem(self.0.saturating_add(rhs.0))
    }
}

impl ops::Sub for Mem {
    type Output = Mem;
    fn sub(self, rhs: Mem) -> Mem {
        Mem(self.0.saturating_sub(rhs.0))
    }
}

const MEM_UNITS: [(&str, u64); 9] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
];

impl fmt::Display for Mem {
    /// In the largest binary unit it reaches: "100 MiB", "1.5 GiB", "7 B".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match MEM_UNITS.iter().take(4).find(|(_, size)| self.0 >= *size) {
            Some((name, size)) if self.0.is_multiple_of(*size) => {
                write!(f, "{} {}", self.0 / size, name)
            }
            Some((name, size)) => write!(f, "{:.1} {}", self.0 as f64 / *size as f64, name),
            None => write!(f, "{} B", self.0),
        }
    }
}

impl fmt::Debug for Mem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The error of parsing a [`Mem`] or a [`Cpu`] from text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseResourceError {
    input: String,
    expected: &'static str,
}

impl fmt::Display for ParseResourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot read {:?} as {}", self.input, self.expected)
    }
}

impl std::error::Error for ParseResourceError {}

impl FromStr for Mem {
    type Err = ParseResourceError;

    /// Parses `"100 GiB"`, `"1.5GiB"`, `"512 MB"` or a plain byte count.
    fn from_str(s: &str) -> Result<Mem, ParseResourceError> {
        let err = || ParseResourceError {
            input: s.to_owned(),
            expected: "an amount of memory such as \"100 MiB\" or \"2 GiB\"",
        };
        let text = s.trim();
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let unit = unit.trim();
        let multiplier = if unit.is_empty() {
            1
        } else {
            MEM_UNITS.iter().find(|(name, _)| name.eq_ignore_ascii_case(unit)).map(|(_, size)| *size).ok_or_else(err)?
        };
        if let Ok(whole) = number.parse::<u64>() {
            return whole.checked_mul(multiplier).map(Mem).ok_or_else(err);
        }
        let value: f64 = number.parse().map_err(|_| err())?;
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(err());
        }
        Ok(Mem(bytes.round() as u64))
    }
}

/// A share of processor time, in fractions of one core.
///
/// # Examples
/// ```
/// use constellation::Cpu;
/// assert_eq!(Cpu::CORE / 16 * 16, Cpu::CORE);
/// assert_eq!("0.5".parse::<Cpu>().unwrap(), Cpu::CORE / 2);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Cpu(u32);

impl Cpu {
    /// One whole core.
    pub const CORE: Cpu = Cpu(1 << 16);

    /// The share as a number of cores.
    pub fn cores(self) -> f64 {
        f64::from(self.0) / f64::from(Cpu::CORE.0)
    }

    /// The share of `cores` cores (fractions allowed).
    pub fn from_cores(cores: f64) -> Cpu {
        Cpu((cores.max(0.0) * f64::from(Cpu::CORE.0)).round().min(f64::from(u32::MAX)) as u32)
    }
}

impl ops::Div<u32> for Cpu {
    type Output = Cpu;
    fn div(self, rhs: u32) -> Cpu {
        Cpu(self.0 / rhs)
    }
}

impl ops::Mul<u32> for Cpu {
    type Output = Cpu;
    fn mul(self, rhs: u32) -> Cpu {
        Cpu(self.0.saturating_mul(rhs))
    }
}

impl ops::Mul<Cpu> for u32 {
    type Output = Cpu;
    fn mul(self, rhs: Cpu) -> Cpu {
        Cpu(rhs.0.saturating_mul(self))
    }
}

impl ops::Add for Cpu {
    type Output = Cpu;
    fn add(self, rhs: Cpu) -> Cpu {
        Cpu(self.0.saturating_add(rhs.0))
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} cores", self.cores())
    }
}

impl fmt::Debug for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Cpu {
    type Err = ParseResourceError;

    /// Parses a number of cores, integer or fraction: `"2"`, `"0.25"`.
    fn from_str(s: &str) -> Result<Cpu, ParseResourceError> {
        let text = s.trim();
        let text = text.strip_suffix("cores").or_else(|| text.strip_suffix("core")).unwrap_or(text);
        match text.trim().parse::<f64>() {
            Ok(cores) if cores.is_finite() && cores >= 0.0 => Ok(Cpu::from_cores(cores)),
            _ => {
                Err(ParseResourceError { input: s.to_owned(), expected: "a number of cores such as \"2\" or \"0.5\"" })
            }
        }
    }
}

/// What a process reserves: memory (enforced as a limit) and processor share (a weight).
///
/// # Examples
/// ```
/// use constellation::{Cpu, Mem, Resources};
/// let small = Resources { mem: 20 * Mem::MIB, cpu: Cpu::CORE / 16 };
/// assert_eq!(Resources::default().mem, 100 * Mem::MIB);
/// # let _ = small;
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Resources {
    /// Memory: the process is stopped if it uses more.
    pub mem: Mem,
    /// Processor share, as a weight against the other processes of the machine.
    pub cpu: Cpu,
}

impl Default for Resources {
    /// 100 MiB and 1/16 of a core.
    fn default() -> Resources {
        Resources { mem: 100 * Mem::MIB, cpu: Cpu::CORE / 16 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_memory() {
        assert_eq!("100 GiB".parse::<Mem>().unwrap(), 100 * Mem::GIB);
        assert_eq!("100GiB".parse::<Mem>().unwrap(), 100 * Mem::GIB);
        assert_eq!("512 mb".parse::<Mem>().unwrap(), Mem::from_bytes(512_000_000));
        assert_eq!("4096".parse::<Mem>().unwrap(), Mem::from_bytes(4096));
        assert_eq!("0.5 KiB".parse::<Mem>().unwrap(), Mem::from_bytes(512));
        assert!("ten GiB".parse::<Mem>().is_err());
        assert!("10 GiBs".parse::<Mem>().is_err());
        assert!("".parse::<Mem>().is_err());
    }

    #[test]
    fn shows_memory() {
        assert_eq!((100 * Mem::GIB).to_string(), "100 GiB");
        assert_eq!(Mem::from_bytes(1536).to_string(), "1.5 KiB");
        assert_eq!(Mem::from_bytes(7).to_string(), "7 B");
    }

    #[test]
    fn parses_cpu() {
        assert_eq!("2".parse::<Cpu>().unwrap(), Cpu::CORE * 2);
        assert_eq!("0.25".parse::<Cpu>().unwrap(), Cpu::CORE / 4);
        assert!("-1".parse::<Cpu>().is_err());
    }
}
