//! Recovery codes: the save's device id, written for a human to keep.
//!
//! A game without accounts has one credential per player: the random
//! device id in the save. Shown as a recovery code (on a settings screen,
//! to write down or photograph) it moves the player to a new device: the
//! new device logs in with the code and is that player — market account,
//! listings and deliveries alike.
//!
//! The ids the addon makes are `dev-` and 128 random bits in hex. Their code
//! is those bits in Crockford's base32 (no I, L, O or U to misread), two
//! check characters, in seven groups of four: `7GQ2-…`. Reading a code
//! forgives case, spaces, dashes, and O/I/L for 0/1/1; a mistyped character
//! fails the check instead of logging in as a stranger. A device id the
//! game chose itself has no code (the game shows its own).

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The recovery code of a device id the addon made, or `None`.
pub fn recovery_code(device_id: &str) -> Option<String> {
    let hex = device_id.strip_prefix("dev-")?;
    if hex.len() != 32
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let value = u128::from_str_radix(hex, 16).ok()?;
    let mut digits = Vec::with_capacity(28);
    // 26 digits of 5 bits hold 130 bits: the top one carries 3.
    for i in (0..26).rev() {
        digits.push(((value >> (i * 5)) & 31) as u8);
    }
    let (a, b) = check(&digits);
    digits.push(a);
    digits.push(b);
    let chars: Vec<char> = digits
        .iter()
        .map(|d| ALPHABET[*d as usize] as char)
        .collect();
    Some(
        chars
            .chunks(4)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join("-"),
    )
}

/// The device id a recovery code stands for, or why it is not one.
pub fn device_id_of(code: &str) -> Result<String, &'static str> {
    let mut digits = Vec::with_capacity(28);
    for c in code.chars() {
        if c == '-' || c.is_whitespace() {
            continue;
        }
        let c = match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        };
        let d = ALPHABET
            .iter()
            .position(|a| *a as char == c)
            .ok_or("a recovery code has only letters and digits")?;
        digits.push(d as u8);
    }
    if digits.len() != 28 {
        return Err("a recovery code has 28 characters");
    }
    if check(&digits[..26]) != (digits[26], digits[27]) {
        return Err("this recovery code has a typo");
    }
    if digits[0] > 7 {
        return Err("this recovery code has a typo");
    }
    let value = digits[..26]
        .iter()
        .fold(0u128, |v, d| (v << 5) | u128::from(*d));
    Ok(format!("dev-{value:032x}"))
}

/// Two check digits: a position-weighted sum and a plain one, mod 31 and 29
/// (primes, so a swapped pair or one wrong digit always shows).
fn check(digits: &[u8]) -> (u8, u8) {
    let weighted: u32 = digits
        .iter()
        .enumerate()
        .map(|(i, d)| (i as u32 + 1) * u32::from(*d))
        .sum();
    let plain: u32 = digits.iter().map(|d| u32::from(*d) * 7 + 3).sum();
    ((weighted % 31) as u8, (plain % 29) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_forgive_what_people_do() {
        for _ in 0..1_000 {
            let id = format!(
                "dev-{:016x}{:016x}",
                rand::random::<u64>(),
                rand::random::<u64>()
            );
            let code = recovery_code(&id).expect("the addon's ids have codes");
            assert_eq!(code.len(), 34, "{code}");
            assert_eq!(device_id_of(&code).as_deref(), Ok(id.as_str()));
            let sloppy = code.to_lowercase().replace('-', " ").replace('0', "o");
            assert_eq!(device_id_of(&sloppy).as_deref(), Ok(id.as_str()));
        }
        assert_eq!(
            device_id_of(&recovery_code(&format!("dev-{}", "0".repeat(32))).unwrap()),
            Ok(format!("dev-{}", "0".repeat(32)))
        );
        assert_eq!(
            device_id_of(&recovery_code(&format!("dev-{}", "f".repeat(32))).unwrap()),
            Ok(format!("dev-{}", "f".repeat(32)))
        );
    }

    #[test]
    fn every_single_typo_and_swap_is_caught() {
        let id = format!(
            "dev-{:016x}{:016x}",
            0x0123_4567_89ab_cdefu64, 0xfedc_ba98_7654_3210u64
        );
        let code: Vec<u8> = recovery_code(&id).unwrap().replace('-', "").into_bytes();
        for i in 0..code.len() {
            for a in ALPHABET {
                if *a == code[i] {
                    continue;
                }
                let mut typo = code.clone();
                typo[i] = *a;
                assert!(
                    device_id_of(std::str::from_utf8(&typo).unwrap()).is_err(),
                    "{i}"
                );
            }
            if i + 1 < code.len() && code[i] != code[i + 1] {
                let mut swapped = code.clone();
                swapped.swap(i, i + 1);
                assert!(
                    device_id_of(std::str::from_utf8(&swapped).unwrap()).is_err(),
                    "swap {i}"
                );
            }
        }
    }

    #[test]
    fn ids_the_game_chose_have_no_code_and_junk_is_refused() {
        assert_eq!(recovery_code("player-42"), None);
        assert_eq!(recovery_code("dev-xyz"), None);
        for junk in ["", "ABCD", "!!!!-!!!!", &"Z".repeat(28), &"U".repeat(28)] {
            assert!(device_id_of(junk).is_err(), "{junk}");
        }
    }
}
