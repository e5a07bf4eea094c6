//! Kubernetes resource quantities (`100m`, `1.5Gi`, `2e3`, `1k`), parsed
//! exactly, the way `k8s.io/apimachinery`'s `resource.ParseQuantity` does.
//!
//! `k8s-openapi`'s `Quantity` is only the string; summing what nodes and pods
//! declare needs the numbers, and floats would lose bytes and millicores. A
//! [`Quantity`] holds the value in nano-units as an `i128`, after the same
//! normalisation Kubernetes applies when it parses:
//!
//! - a non-zero value is rounded up (away from zero) to a whole nano-unit, so
//!   `1n` stays `1n` and `0.1n` becomes `1n`;
//! - a magnitude above `2^63 - 1` units is capped there.
//!
//! The scheduler then reads a quantity as [`Quantity::milli_ceil`] for CPU
//! (`MilliValue`) and as [`Quantity::units_ceil`] for everything else
//! (`Value`); both round up.
//!
//! Grammar (from `resource.Quantity`'s documentation):
//!
//! ```text
//! <quantity>        ::= <signedNumber><suffix>
//! <signedNumber>    ::= <number> | + <number> | - <number>
//! <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
//! <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
//! <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
//! <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
//! <decimalExponent> ::= e <signedNumber> | E <signedNumber>   (an integer)
//! ```

use std::fmt;

/// Nano-units in one unit.
const NANO: i128 = 1_000_000_000;

/// The largest magnitude Kubernetes keeps: `2^63 - 1` units, in nano-units.
const MAX_NANO: i128 = (i64::MAX as i128) * NANO;

/// Decimal digits that certainly exceed [`MAX_NANO`] (it has 28).
const MAX_INTEGER_DIGITS: usize = 29;

/// An exact Kubernetes quantity, in nano-units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity {
    nano: i128,
}

/// Why a string is not a Kubernetes quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quantity {input:?} is malformed: {reason}")]
pub struct QuantityError {
    /// The string that was refused.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Quantity {
    /// Zero.
    pub const ZERO: Quantity = Quantity { nano: 0 };

    /// A quantity of `nano` nano-units.
    pub const fn from_nano(nano: i128) -> Self {
        Self { nano }
    }

    /// The value in nano-units.
    pub const fn nano(self) -> i128 {
        self.nano
    }

    /// Parses `input` as Kubernetes does (see the module documentation).
    pub fn parse(input: &str) -> Result<Self, QuantityError> {
        let fail = |reason| QuantityError {
            input: input.to_owned(),
            reason,
        };
        let bytes = input.as_bytes();
        if bytes.is_empty() {
            return Err(fail("it is empty"));
        }
        let mut pos = 0;
        let negative = match bytes[0] {
            b'-' => {
                pos = 1;
                true
            }
            b'+' => {
                pos = 1;
                false
            }
            _ => false,
        };
        let int_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        let integer = &input[int_start..pos];
        let mut fraction = "";
        if pos < bytes.len() && bytes[pos] == b'.' {
            pos += 1;
            let frac_start = pos;
            while pos < bytes.len() && bytes[pos].is_ascii_digit() {
                pos += 1;
            }
            fraction = &input[frac_start..pos];
        }
        if integer.is_empty() && fraction.is_empty() {
            return Err(fail("it has no digits before its suffix"));
        }
        let (exp10, exp2) = suffix(&input[pos..]).map_err(fail)?;
        let magnitude = scale(integer, fraction, exp10, exp2);
        Ok(Self {
            nano: if negative { -magnitude } else { magnitude },
        })
    }

    /// `ceil(value * 1000)`: Kubernetes' `MilliValue`, what the scheduler
    /// counts CPU in.
    pub fn milli_ceil(self) -> i128 {
        div_ceil(self.nano, NANO / 1000)
    }

    /// `ceil(value)`: Kubernetes' `Value`, what the scheduler counts memory,
    /// storage, pods and extended resources in.
    pub fn units_ceil(self) -> i128 {
        div_ceil(self.nano, NANO)
    }
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Quantity {
    /// The value in nano-units with an `n` suffix: exact, not canonical.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}n", self.nano)
    }
}

/// `ceil(a / b)` for `b > 0`.
fn div_ceil(a: i128, b: i128) -> i128 {
    let q = a.div_euclid(b);
    if a.rem_euclid(b) == 0 { q } else { q + 1 }
}

/// The suffix as a power of ten and a power of two.
fn suffix(s: &str) -> Result<(i64, u32), &'static str> {
    Ok(match s {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            let exponent = s
                .strip_prefix('e')
                .or_else(|| s.strip_prefix('E'))
                .ok_or("unknown suffix (expected n, u, m, k, M, G, T, P, E, Ki … Ei or e<exp>)")?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err("the exponent after `e` is not an integer");
            }
            let exp = exponent
                .parse::<i64>()
                .map_err(|_| "the exponent after `e` does not fit 64 bits")?;
            (exp, 0)
        }
    })
}

/// `|integer.fraction| * 10^exp10 * 2^exp2` in nano-units, rounded up to a
/// whole nano-unit and capped at [`MAX_NANO`].
fn scale(integer: &str, fraction: &str, exp10: i64, exp2: u32) -> i128 {
    if let Some(value) = scale_fast(integer, fraction, exp10, exp2) {
        return value;
    }
    // Every digit, most significant first; the decimal point sits after
    // `point` digits. Multiplying by 2^exp2 first keeps everything exact.
    let mut digits: Vec<u8> = integer
        .bytes()
        .chain(fraction.bytes())
        .map(|b| b - b'0')
        .collect();
    let mut point = integer.len() as i64;
    for _ in 0..exp2 {
        if double(&mut digits) {
            point += 1;
        }
    }
    // Nano-units: the point moves right by the exponent and nine places.
    point = point.saturating_add(exp10).saturating_add(9);
    // Leading zeros do not count towards the size of the integer part.
    let first = digits.iter().position(|&d| d != 0);
    let Some(first) = first else {
        return 0;
    };
    // `point` may sit at the end of the i64 range (a huge exponent): no
    // arithmetic on it may overflow.
    let significant_integer_digits = point.saturating_sub(first as i64);
    if significant_integer_digits > MAX_INTEGER_DIGITS as i64 {
        return MAX_NANO;
    }
    let mut value: i128 = 0;
    let mut rest_nonzero = false;
    for (i, &d) in digits.iter().enumerate() {
        if (i as i64) < point {
            value = value * 10 + i128::from(d);
        } else if d != 0 {
            rest_nonzero = true;
            break;
        }
    }
    // Integer digits beyond the given ones are zeros.
    let missing = point.saturating_sub(digits.len() as i64);
    for _ in 0..missing.max(0) {
        value *= 10;
    }
    if rest_nonzero {
        value += 1;
    }
    value.min(MAX_NANO)
}

/// [`scale`] in `i128` arithmetic, for the usual quantities: at most 19
/// significant digits, so `mantissa * 2^60` still fits. `None` otherwise.
fn scale_fast(integer: &str, fraction: &str, exp10: i64, exp2: u32) -> Option<i128> {
    let integer = integer.trim_start_matches('0');
    let fraction = fraction.trim_end_matches('0');
    if integer.len() + fraction.len() > 19 {
        return None;
    }
    let mut mantissa: i128 = 0;
    for b in integer.bytes().chain(fraction.bytes()) {
        mantissa = mantissa * 10 + i128::from(b - b'0');
    }
    if mantissa == 0 {
        return Some(0);
    }
    // value (nano) = mantissa * 2^exp2 * 10^(exp10 + 9 - fraction digits)
    let mantissa = mantissa << exp2;
    let shift = exp10
        .saturating_add(9)
        .saturating_sub(fraction.len() as i64);
    if shift >= 0 {
        if shift > MAX_INTEGER_DIGITS as i64 {
            return Some(MAX_NANO);
        }
        let factor = 10i128.checked_pow(shift as u32)?;
        Some(
            mantissa
                .checked_mul(factor)
                .map_or(MAX_NANO, |v| v.min(MAX_NANO)),
        )
    } else if shift < -38 {
        // mantissa < 2^124 < 10^38: a positive value below one nano-unit.
        Some(1)
    } else {
        let divisor = 10i128.pow((-shift) as u32);
        Some(div_ceil(mantissa, divisor).min(MAX_NANO))
    }
}

/// Doubles the decimal number `digits` in place; true when it grew a digit.
fn double(digits: &mut Vec<u8>) -> bool {
    let mut carry = 0;
    for d in digits.iter_mut().rev() {
        let v = *d * 2 + carry;
        *d = v % 10;
        carry = v / 10;
    }
    if carry > 0 {
        digits.insert(0, carry);
        true
    } else {
        false
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn nano(s: &str) -> i128 {
        Quantity::parse(s).unwrap().nano()
    }

    #[test]
    fn decimal_si_suffixes() {
        assert_eq!(nano("1"), NANO);
        assert_eq!(nano("100m"), 100_000_000);
        assert_eq!(nano("1n"), 1);
        assert_eq!(nano("5u"), 5_000);
        assert_eq!(nano("1k"), 1_000 * NANO);
        assert_eq!(nano("2M"), 2_000_000 * NANO);
        assert_eq!(nano("3G"), 3_000_000_000 * NANO);
        assert_eq!(nano("1T"), 1_000_000_000_000 * NANO);
        assert_eq!(nano("1P"), 1_000_000_000_000_000 * NANO);
        assert_eq!(nano("1E"), 1_000_000_000_000_000_000 * NANO);
    }

    #[test]
    fn binary_si_suffixes() {
        assert_eq!(nano("1Ki"), 1024 * NANO);
        assert_eq!(nano("1Mi"), (1 << 20) * NANO);
        assert_eq!(nano("1.5Gi"), 1_610_612_736 * NANO);
        assert_eq!(nano("2Ti"), (2 << 40) * NANO);
        assert_eq!(nano("1Pi"), (1 << 50) * NANO);
        assert_eq!(nano("3Ei"), (3 << 60) * NANO);
        // 0.1Ki = 102.4 exactly.
        assert_eq!(nano("0.1Ki"), 102_400_000_000);
        assert_eq!(Quantity::parse("0.1Ki").unwrap().units_ceil(), 103);
    }

    #[test]
    fn decimal_exponents() {
        assert_eq!(nano("2e3"), 2_000 * NANO);
        assert_eq!(nano("2E3"), 2_000 * NANO);
        assert_eq!(nano("1.5e+2"), 150 * NANO);
        assert_eq!(nano("15e-1"), 1_500_000_000);
        assert_eq!(nano("1e-9"), 1);
        assert_eq!(nano("1e0"), NANO);
    }

    #[test]
    fn number_forms_and_signs() {
        assert_eq!(nano(".5"), 500_000_000);
        assert_eq!(nano("5."), 5 * NANO);
        assert_eq!(nano("+5"), 5 * NANO);
        assert_eq!(nano("-5m"), -5_000_000);
        assert_eq!(nano("0"), 0);
        assert_eq!(nano("0000.000Gi"), 0);
        assert_eq!(nano("007"), 7 * NANO);
    }

    #[test]
    fn rounds_up_to_nano_and_caps_at_the_int64_maximum() {
        assert_eq!(nano("0.1n"), 1);
        assert_eq!(nano("1.0000000001"), NANO + 1);
        assert_eq!(nano("-0.1n"), -1);
        assert_eq!(nano("1e-30"), 1);
        assert_eq!(nano("0.000000000000000000000000000000000000000000001"), 1);
        assert_eq!(nano("9223372036854775807"), MAX_NANO);
        assert_eq!(nano("9223372036854775808"), MAX_NANO);
        assert_eq!(nano("100Ei"), MAX_NANO);
        assert_eq!(nano("1e400"), MAX_NANO);
        assert_eq!(
            nano("123456789012345678901234567890123456789012345"),
            MAX_NANO
        );
        assert_eq!(nano("-1e400"), -MAX_NANO);
    }

    #[test]
    fn the_scheduler_reads_millis_for_cpu_and_units_for_the_rest() {
        let q = |s: &str| Quantity::parse(s).unwrap();
        assert_eq!(q("100m").milli_ceil(), 100);
        assert_eq!(q("0.5").milli_ceil(), 500);
        assert_eq!(q("1n").milli_ceil(), 1);
        assert_eq!(q("1500u").milli_ceil(), 2);
        assert_eq!(q("2").milli_ceil(), 2000);
        assert_eq!(q("1.5").units_ceil(), 2);
        assert_eq!(q("128Mi").units_ceil(), 134_217_728);
        assert_eq!(q("1k").units_ceil(), 1000);
        assert_eq!(q("100m").units_ceil(), 1);
        assert_eq!(q("-1.5").units_ceil(), -1);
    }

    #[test]
    fn exponents_at_the_ends_of_the_range_round_and_cap_without_overflow() {
        // Found by the `quantity` fuzz target: more than 19 significant
        // digits (the exact path) with an exponent near i64::MIN.
        let tiny = format!(
            "-{}.{}59e-9223372036854775807",
            "0".repeat(50),
            "0".repeat(30)
        );
        // One nano-unit below zero, as any nonzero magnitude rounds up to.
        assert_eq!(Quantity::parse(&tiny).map(Quantity::milli_ceil), Ok(0));
        assert!(
            Quantity::parse(&tiny)
                .is_ok_and(|q| q != Quantity::parse("0").unwrap_or_else(|_| panic!("zero")))
        );
        let huge = format!("{}.{}1e9223372036854775807", "1".repeat(25), "0".repeat(5));
        assert!(Quantity::parse(&huge).is_ok_and(|q| q.units_ceil() > 0));
    }

    #[test]
    fn the_fast_path_agrees_with_the_exact_digit_arithmetic() {
        let slow = |integer: &str, fraction: &str, exp10: i64, exp2: u32| {
            // The digit-by-digit path, with the fast one skipped.
            let mut digits: Vec<u8> = integer
                .bytes()
                .chain(fraction.bytes())
                .map(|b| b - b'0')
                .collect();
            let mut point = integer.len() as i64;
            for _ in 0..exp2 {
                if double(&mut digits) {
                    point += 1;
                }
            }
            let mut value: i128 = 0;
            let mut rest = false;
            point += exp10 + 9;
            if point - digits.iter().position(|&d| d != 0).unwrap_or(digits.len()) as i64 > 29 {
                return MAX_NANO;
            }
            for (i, &d) in digits.iter().enumerate() {
                if (i as i64) < point {
                    value = value * 10 + i128::from(d);
                } else if d != 0 {
                    rest = true;
                }
            }
            for _ in 0..(point - digits.len() as i64).max(0) {
                value *= 10;
            }
            (value + i128::from(rest)).min(MAX_NANO)
        };
        for (integer, fraction) in [
            ("1", ""),
            ("0", "5"),
            ("123", "456"),
            ("", "000001"),
            ("9999999999", "999999999"),
            ("15", ""),
        ] {
            for exp10 in [-30, -12, -9, -3, 0, 3, 9, 18, 25] {
                for exp2 in [0, 10, 30, 60] {
                    assert_eq!(
                        scale_fast(integer, fraction, exp10, exp2),
                        Some(slow(integer, fraction, exp10, exp2)),
                        "{integer}.{fraction} e{exp10} 2^{exp2}"
                    );
                }
            }
        }
    }

    #[test]
    fn malformed_quantities_are_refused_with_the_input_named() {
        for bad in [
            "",
            "-",
            "+",
            ".",
            "m",
            "Gi",
            "1.2.3",
            "1 Gi",
            " 1",
            "1gi",
            "1KiB",
            "1e",
            "1e+",
            "1e1.5",
            "1ee3",
            "1e99999999999999999999",
            "0x10",
            "1,5",
            "abc",
            "--1",
            "1Ki1",
        ] {
            let err = Quantity::parse(bad).unwrap_err();
            assert_eq!(err.input, bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
