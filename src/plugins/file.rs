//! The file plugin (placeholder while under construction).
use crate::error::Result;
use crate::plugin::{Handle, Plugin};
/// The file plugin.
#[derive(Default)]
pub struct FilePlugin;
impl FilePlugin {
    /// New.
    pub fn new() -> Self {
        FilePlugin
    }
}
impl Plugin for FilePlugin {
    fn name(&self) -> &'static str {
        "file"
    }
    fn config_help(&self) -> &'static str {
        "x"
    }
    fn open(&self, _r: bool, _e: &str, _t: bool) -> Result<Box<dyn Handle>> {
        todo!()
    }
}
