//! End-to-end suites in one binary (one link step on 2-core CI): black-box
//! HTTP against the built server binary on both databases, three replicas
//! on one PostgreSQL, and the headless Godot suite (`godot_headless`, run
//! when `GDRUST_GODOT_BIN` is set; it says SKIPPED otherwise).

mod black_box;
mod console_browser;
mod godot_editor;
mod godot_headless;
mod identity;
mod replicas;
