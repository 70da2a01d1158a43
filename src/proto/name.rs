//! Naming rules for accounts and metadata keys, checked at the edge.

/// Longest account name.
pub const MAX_USERNAME_CHARS: usize = 32;
/// Longest metadata key.
pub const MAX_META_KEY_CHARS: usize = 64;
/// Shortest and longest password, in bytes.
pub const PASSWORD_BYTES: std::ops::RangeInclusive<usize> = 8..=1024;

/// Account names: 1 to 32 characters, an ASCII letter first, then ASCII
/// letters, digits, `_`, `-` or `.`. Unique without regard to case; the case
/// given at registration is how the name is shown.
pub fn check_username(name: &str) -> Result<(), &'static str> {
    let mut bytes = name.bytes();
    match bytes.next() {
        None => return Err("an account name cannot be empty"),
        Some(b) if !b.is_ascii_alphabetic() => return Err("an account name starts with a letter"),
        Some(_) => {}
    }
    if name.len() > MAX_USERNAME_CHARS {
        return Err("an account name has at most 32 characters");
    }
    if !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) {
        return Err("an account name has only letters, digits, '_', '-' and '.'");
    }
    Ok(())
}

/// Longest topic name.
pub const MAX_TOPIC_NAME_CHARS: usize = 64;

/// Topic names: 1 to 64 characters, each a letter or digit (any script) or
/// one of `_ - . # +`; never a UUID (UUIDs name topics by id).
pub fn check_topic_name(name: &str) -> Result<(), &'static str> {
    let count = name.chars().count();
    if count == 0 || count > MAX_TOPIC_NAME_CHARS {
        return Err("a topic name has 1 to 64 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_alphanumeric() || "_-.#+".contains(c))
    {
        return Err("a topic name has only letters, digits, '_', '-', '.', '#' and '+'");
    }
    if uuid::Uuid::parse_str(name).is_ok() {
        return Err("a topic name cannot be a UUID");
    }
    Ok(())
}

/// Metadata keys: 1 to 64 of `a-z 0-9 _ - .`; `for` is reserved (replies
/// carry `ex.for`).
pub fn check_meta_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() || key.len() > MAX_META_KEY_CHARS {
        return Err("metadata keys have 1 to 64 characters");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err("metadata keys have only a-z, 0-9, '_', '-' and '.'");
    }
    if key == "for" {
        return Err("the metadata key \"for\" is reserved");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["danopia", "Dan", "a", "x.y-z_1"] {
            assert!(check_username(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1dan",
            "dan@10b.it",
            "dan danopia",
            "é",
            &"a".repeat(33),
            "~x",
        ] {
            assert!(check_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn meta_keys() {
        assert!(check_meta_key("fullname").is_ok());
        assert!(check_meta_key("for").is_err());
        assert!(check_meta_key("Full").is_err());
        assert!(check_meta_key("").is_err());
    }
}
