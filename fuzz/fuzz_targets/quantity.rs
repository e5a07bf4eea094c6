//! `Quantity::parse` (agent/src/capacity/quantity.rs) on arbitrary text.
//!
//! Properties, for every input the parser accepts:
//! - the exact form it prints (`<nano>n`) parses back to the same quantity;
//! - the magnitude never exceeds Kubernetes' cap, `2^63 - 1` units;
//! - a leading `+` changes nothing and a leading `-` negates;
//! - `milli_ceil` and `units_ceil` are the ceilings they claim to be;
//! - where an `f64` can tell, the value agrees with a float reading of the
//!   same digits and suffix (an independent check of the scaling).
//!
//! A refusal names the input it refused.

#![no_main]

use libfuzzer_sys::fuzz_target;
use uplink_agent::capacity::Quantity;

const NANO: i128 = 1_000_000_000;
const MAX_NANO: i128 = (i64::MAX as i128) * NANO;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let quantity = match Quantity::parse(input) {
        Ok(quantity) => quantity,
        Err(error) => {
            assert_eq!(error.input, input, "the error names another input");
            return;
        }
    };
    let nano = quantity.nano();
    assert!(
        nano.abs() <= MAX_NANO,
        "{input:?} parsed past the cap: {nano}"
    );

    let printed = quantity.to_string();
    assert_eq!(
        Quantity::parse(&printed).ok(),
        Some(quantity),
        "{input:?} printed as {printed:?} does not parse back"
    );

    if let Some(rest) = input.strip_prefix('+') {
        assert_eq!(
            Quantity::parse(rest).ok(),
            Some(quantity),
            "{input:?}: `+` changed it"
        );
    }
    if let Some(rest) = input.strip_prefix('-')
        && !rest.starts_with(['+', '-'])
    {
        let positive = Quantity::parse(rest).map(Quantity::nano).ok();
        assert_eq!(positive, Some(-nano), "{input:?}: `-` did not negate");
    }

    let milli = quantity.milli_ceil();
    let per_milli = NANO / 1000;
    assert!(
        milli * per_milli >= nano && (milli - 1) * per_milli < nano,
        "milli_ceil of {nano}n is {milli}"
    );
    let units = quantity.units_ceil();
    assert!(
        units * NANO >= nano && (units - 1) * NANO < nano,
        "units_ceil of {nano}n is {units}"
    );

    if let Some(expected) = float_reading(input) {
        check_against_float(input, nano, expected);
    }
});

/// The input read with `f64`s: its number times its suffix's multiplier.
fn float_reading(input: &str) -> Option<f64> {
    let split = input
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || (*i == 0 && matches!(c, '+' | '-'))))
        .map_or(input.len(), |(i, _)| i);
    let (number, suffix) = input.split_at(split);
    let number: f64 = match number.trim_start_matches('+') {
        n if n.ends_with('.') => format!("{n}0").parse().ok()?,
        n if n.starts_with('.') => format!("0{n}").parse().ok()?,
        n if n.starts_with("-.") => format!("-0{}", &n[1..]).parse().ok()?,
        n => n.parse().ok()?,
    };
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 2f64.powi(10),
        "Mi" => 2f64.powi(20),
        "Gi" => 2f64.powi(30),
        "Ti" => 2f64.powi(40),
        "Pi" => 2f64.powi(50),
        "Ei" => 2f64.powi(60),
        _ => {
            let exponent: i32 = suffix.strip_prefix(['e', 'E'])?.parse().ok()?;
            10f64.powi(exponent)
        }
    };
    Some(number * multiplier)
}

/// `nano` against the float reading, where floats are precise enough to
/// say: well inside the range, rounding up only at the nano-unit.
fn check_against_float(input: &str, nano: i128, expected_units: f64) {
    let magnitude = expected_units.abs();
    if !magnitude.is_finite() || magnitude > 1e19 {
        // Past 2^63 - 1 units: capped (the float may overflow to infinity).
        if magnitude > 9.3e18 {
            assert_eq!(nano.abs(), MAX_NANO, "{input:?} is not capped");
        }
        return;
    }
    if !(1e-6..=9e18).contains(&magnitude) {
        return;
    }
    let got = nano as f64 / 1e9;
    let tolerance = magnitude * 1e-9 + 1e-9;
    assert!(
        (got - expected_units).abs() <= tolerance,
        "{input:?} parsed as {nano}n, a float reading says {expected_units}"
    );
}
