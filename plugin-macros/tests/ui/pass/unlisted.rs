// Capabilities need not be listed: the derive exports every capability trait the type
// implements (here `Response` and `Lifecycle`, and no others).
use plugin_abi::*;

#[derive(Plugin)]
#[plugin(name = "unlisted")]
struct Unlisted;

impl Plugin for Unlisted {
    fn init(_: Config<'_>, _: Host) -> Result<Self, PluginError> {
        Ok(Unlisted)
    }
}

impl Response for Unlisted {
    fn on_response_headers(&self, _: &Context<'_>, _: &UpstreamResponse<'_>) -> Result<Decision, PluginError> {
        Ok(Decision::Continue)
    }
}

impl Lifecycle for Unlisted {}

fn main() {
    use plugin_abi::__private::Exported;
    let names: Vec<u32> = Unlisted::metadata().capabilities.iter().map(|e| e.id).collect();
    assert_eq!(names, [plugin_abi::ffi::cap::RESPONSE, plugin_abi::ffi::cap::LIFECYCLE, plugin_abi::ffi::cap::BUILD]);
}
