//! Where a save file goes.
//!
//! Games write `save_path` the way Godot paths are written. `res://` is the
//! game's own folder — read-only once the game is exported — so a save there
//! would work in the editor and fail for every player: it is refused.
//! `user://` and relative paths land in the game's user data folder;
//! absolute paths are taken as they are.

use std::path::{Path, PathBuf};

/// Resolves `raw` against `user_dir` (the folder Godot's `user://` names).
pub fn resolve_save_path(raw: &str, user_dir: &Path) -> Result<PathBuf, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("save_path is empty".into());
    }
    if raw.starts_with("res://") {
        return Err(format!(
            "save_path {raw:?} is inside the game's own files, which are read-only in an exported game; use user:// (for example user://player_data.json)"
        ));
    }
    if raw.contains("://") && !raw.starts_with("user://") {
        return Err(format!(
            "save_path {raw:?}: only user:// and file paths are supported"
        ));
    }
    if raw.ends_with('/') || raw.ends_with('\\') {
        return Err(format!("save_path {raw:?} names a folder, not a file"));
    }
    let relative = raw.strip_prefix("user://").unwrap_or(raw);
    let path = Path::new(relative);
    if path.is_absolute() && !raw.starts_with("user://") {
        return Ok(path.to_path_buf());
    }
    Ok(user_dir.join(relative.trim_start_matches(['/', '\\'])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_paths_resolve_under_user_data_and_refuse_res() {
        let user = Path::new("/home/p/.local/share/game");
        assert_eq!(
            resolve_save_path("user://slots/1.json", user).unwrap(),
            user.join("slots/1.json")
        );
        assert_eq!(
            resolve_save_path("save.json", user).unwrap(),
            user.join("save.json")
        );
        assert_eq!(
            resolve_save_path("saves/a.json", user).unwrap(),
            user.join("saves/a.json")
        );
        #[cfg(unix)]
        assert_eq!(
            resolve_save_path("/tmp/x.json", user).unwrap(),
            PathBuf::from("/tmp/x.json")
        );
        let err = resolve_save_path("res://player.json", user).unwrap_err();
        assert!(err.contains("read-only"), "{err}");
        assert!(resolve_save_path("", user).is_err());
        assert!(resolve_save_path("user://", user).is_err());
        assert!(resolve_save_path("user://dir/", user).is_err());
        assert!(resolve_save_path("http://x/y.json", user).is_err());
    }
}
