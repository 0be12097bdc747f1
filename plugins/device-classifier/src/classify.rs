//! User-Agent classification: device type, OS family and browser family.
//!
//! Two layers, both compiled once in [`Classifier::new`]:
//!
//! * **Families** come from [uap-core](https://github.com/ua-parser/uap-core)'s
//!   regex database, run by the `ua-parser` crate (the reference Rust
//!   implementation). The names are uap-core's own, for example
//!   - OS: `"Windows"`, `"Mac OS X"`, `"iOS"`, `"Android"`, `"Linux"`,
//!     `"Ubuntu"`, `"Chrome OS"`, `"Tizen"`, `"KaiOS"`, `"WatchOS"`;
//!   - browser: `"Chrome"`, `"Chrome Mobile"`, `"Chrome Mobile WebView"`,
//!     `"Firefox"`, `"Safari"`, `"Mobile Safari"`, `"Edge"`, `"Opera"`,
//!     `"Samsung Internet"`, `"Yandex Browser"`, and for robots their own
//!     name (`"Googlebot"`, `"bingbot"`, ...);
//!   - `"Other"` when uap-core does not know it.
//! * **Device type** comes from an ordered table of User-Agent tokens
//!   (`classify/rules.rs`), because no uap-core port that builds for
//!   `wasm32-unknown-unknown` classifies devices into types. If no rule
//!   applies, a UA of plain ASCII words without a platform comment (a
//!   library, script or tool, e.g. `collectd/5.5.1`) is taken as a
//!   [`DeviceType::Bot`]; anything else is [`DeviceType::Unknown`].
//!
//! Only the first [`MAX_UA_LEN`] bytes of a User-Agent are looked at: real
//! ones are far shorter, and this bounds the cost of hostile input.

mod families;
mod rules;

use families::{Families, OTHER};
use rules::RuleSet;

/// Bytes of a User-Agent that are classified; the rest is ignored.
pub const MAX_UA_LEN: usize = 1024;

/// The kind of device a User-Agent comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceType {
    /// Desktop or laptop computer (including Chromebooks).
    Desktop,
    /// Phone: smartphone, phablet or feature phone.
    Mobile,
    /// Tablet or e-reader.
    Tablet,
    /// Smart TV, set-top box, streaming stick or smart display.
    Tv,
    /// Game console, home or handheld.
    Console,
    /// Watch, glasses or VR/AR headset.
    Wearable,
    /// Crawler, monitor, script or other automated client.
    Bot,
    /// Car browser, camera, portable media player, smart speaker or
    /// peripheral (projector, point of sale, scanner, ...).
    Other,
    /// Nothing can be said.
    Unknown,
}

impl DeviceType {
    /// The name written to the profile.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Desktop => "desktop",
            Self::Mobile => "mobile",
            Self::Tablet => "tablet",
            Self::Tv => "tv",
            Self::Console => "console",
            Self::Wearable => "wearable",
            Self::Bot => "bot",
            Self::Other => "other",
            Self::Unknown => "unknown",
        }
    }
}

/// What a User-Agent says about its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub device_type: DeviceType,
    /// uap-core OS family (`"iOS"`, `"Android"`, `"Windows"`, `"Mac OS X"`,
    /// ...) or `"Other"`.
    pub os_family: String,
    /// uap-core browser family (`"Chrome"`, `"Mobile Safari"`, ...) or
    /// `"Other"`.
    pub browser_family: String,
}

impl Device {
    fn unknown() -> Self {
        Self {
            device_type: DeviceType::Unknown,
            os_family: OTHER.to_owned(),
            browser_family: OTHER.to_owned(),
        }
    }
}

/// Compiled classification state; build once, classify many.
pub struct Classifier {
    families: Families,
    rules: RuleSet,
}

impl Classifier {
    /// Compiles the uap-core database and the device rule table.
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            families: Families::new()?,
            rules: RuleSet::new()?,
        })
    }

    /// Classifies one User-Agent. Never panics; an empty or meaningless
    /// string gives [`DeviceType::Unknown`] with `"Other"` families.
    pub fn classify(&self, user_agent: &str) -> Device {
        let ua = truncate(user_agent, MAX_UA_LEN).trim();
        if ua.is_empty() {
            return Device::unknown();
        }
        let device_type = self
            .rules
            .device_type(ua)
            .unwrap_or_else(|| fallback_type(ua));
        Device {
            device_type,
            os_family: self.families.os(ua),
            browser_family: self.families.browser(ua),
        }
    }
}

/// For a UA that no rule recognises. Browsers, apps and devices describe
/// their platform in a parenthesised comment; a UA without one, made of
/// plain ASCII words such as `collectd/5.5.1`, `node` or `Report Runner`, is
/// a library, script or tool: an automated client. Anything else (symbols,
/// control characters, non-ASCII text) says nothing.
fn fallback_type(ua: &str) -> DeviceType {
    let plain_words = ua
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b" ._-/:;,+".contains(&b));
    let letters = ua.bytes().filter(u8::is_ascii_alphabetic).count();
    if plain_words && letters >= 3 {
        DeviceType::Bot
    } else {
        DeviceType::Unknown
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char
/// boundary.
fn truncate(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary(max)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier() -> Classifier {
        Classifier::new().expect("classifier builds")
    }

    fn check(ua: &str, device_type: DeviceType, os: &str, browser: &str) {
        let d = classifier().classify(ua);
        assert_eq!(
            (
                d.device_type,
                d.os_family.as_str(),
                d.browser_family.as_str()
            ),
            (device_type, os, browser),
            "{ua}"
        );
    }

    #[test]
    fn iphone_safari() {
        check(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
            DeviceType::Mobile,
            "iOS",
            "Mobile Safari",
        );
    }

    #[test]
    fn windows_chrome() {
        check(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
            DeviceType::Desktop,
            "Windows",
            "Chrome",
        );
    }

    #[test]
    fn mac_firefox() {
        check(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:125.0) Gecko/20100101 Firefox/125.0",
            DeviceType::Desktop,
            "Mac OS X",
            "Firefox",
        );
    }

    #[test]
    fn android_phone_and_tablet() {
        check(
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
            DeviceType::Mobile,
            "Android",
            "Chrome Mobile",
        );
        let d = classifier().classify(
            "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
        );
        assert_eq!(
            (d.device_type, d.os_family.as_str()),
            (DeviceType::Tablet, "Android")
        );
    }

    #[test]
    fn googlebot() {
        check(
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            DeviceType::Bot,
            "Other",
            "Googlebot",
        );
    }

    #[test]
    fn ipad() {
        let d = classifier().classify(
            "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
        );
        assert_eq!(
            (d.device_type, d.os_family.as_str()),
            (DeviceType::Tablet, "iOS")
        );
    }

    #[test]
    fn playstation() {
        let c = classifier();
        for ua in [
            "Mozilla/5.0 (PlayStation; PlayStation 5/2.26) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.0 Safari/605.1.15",
            "Mozilla/5.0 (PlayStation 4 5.55) AppleWebKit/601.2 (KHTML, like Gecko)",
        ] {
            assert_eq!(c.classify(ua).device_type, DeviceType::Console, "{ua}");
        }
    }

    #[test]
    fn smart_tv() {
        let c = classifier();
        for ua in [
            "Mozilla/5.0 (SMART-TV; LINUX; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) 76.0.3809.146/6.0 TV Safari/537.36",
            "Mozilla/5.0 (Web0S; Linux/SmartTV) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/87.0.4280.88 Safari/537.36 WebAppManager",
            "Roku/DVP-9.10 (519.10E04111A)",
        ] {
            assert_eq!(c.classify(ua).device_type, DeviceType::Tv, "{ua}");
        }
    }

    #[test]
    fn watch() {
        let d = classifier().classify(
            "Mozilla/5.0 (Linux; Android 11; SM-R870) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/112.0.0.0 Mobile Safari/537.36",
        );
        assert_eq!(d.device_type, DeviceType::Wearable);
    }

    /// Everyday User-Agents (none from the accuracy data set).
    #[test]
    fn common_user_agents() {
        use DeviceType::*;
        let cases = [
            (
                Mobile,
                "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
            ),
            (
                Mobile,
                "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
            ),
            (
                Mobile,
                "Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0",
            ),
            (
                Mobile,
                "Dalvik/2.1.0 (Linux; U; Android 13; SM-A536B Build/TP1A.220624.014)",
            ),
            (Mobile, "okhttp/4.12.0"),
            (
                Desktop,
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80",
            ),
            (
                Desktop,
                "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
            ),
            (
                Desktop,
                "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
            ),
            (
                Desktop,
                "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 6.1; Trident/4.0; SLCC2; Media Center PC 6.0; Tablet PC 2.0)",
            ),
            (
                Tablet,
                "Mozilla/5.0 (Linux; Android 14; Pixel Tablet) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
            ),
            (
                Tablet,
                "Mozilla/5.0 (Linux; Android 11; KFTRWI) AppleWebKit/537.36 (KHTML, like Gecko) Silk/124.2.1 like Chrome/124.0.6367.82 Safari/537.36",
            ),
            (
                Tv,
                "Mozilla/5.0 (Linux; Android 9; AFTKA Build/PS7624.3337N; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/124.0.6367.82 Mobile Safari/537.36",
            ),
            (
                Tv,
                "Mozilla/5.0 (X11; Linux armv7l) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/114.0.0.0 Safari/537.36 CrKey/1.56.500000 DeviceType/Chromecast",
            ),
            (Tv, "AppleTV14,1/17.4 (21L569)"),
            (
                Console,
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64; Xbox; Xbox Series X) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/48.0.2564.82 Safari/537.36 Edge/20.02",
            ),
            (
                Console,
                "Mozilla/5.0 (Nintendo Switch; WifiWebAuthApplet) AppleWebKit/606.4 (KHTML, like Gecko) NF/6.0.1.15.4 NintendoBrowser/5.1.0.20393",
            ),
            (
                Wearable,
                "Mozilla/5.0 (X11; Linux x86_64; Quest 3) AppleWebKit/537.36 (KHTML, like Gecko) OculusBrowser/33.0.0.6.95 Chrome/124.0.6367.174 VR Safari/537.36",
            ),
            (
                Wearable,
                "Mozilla/5.0 (Linux; Android 11; Galaxy Watch4) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/110.0.0.0 Mobile Safari/537.36",
            ),
            (
                Bot,
                "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36",
            ),
            (
                Bot,
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.6367.60 Safari/537.36",
            ),
            (
                Bot,
                "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            ),
            (
                Other,
                "Mozilla/5.0 (X11; GNU/Linux) AppleWebKit/537.36 (KHTML, like Gecko) Chromium/79.0.3945.130 Chrome/79.0.3945.130 Safari/537.36 Tesla/2024.14.6-b5cb8b6b2d",
            ),
        ];
        let c = classifier();
        for (want, ua) in cases {
            assert_eq!(c.classify(ua).device_type, want, "{ua}");
        }
    }

    #[test]
    fn empty_and_garbage_are_unknown() {
        let c = classifier();
        for ua in [
            "",
            "   ",
            "-",
            "%%%",
            "12345",
            "\u{0}\u{1}\u{7f}",
            "ü€😀",
            "¯\\_(ツ)_/¯",
        ] {
            assert_eq!(c.classify(ua), Device::unknown(), "{ua:?}");
        }
    }

    #[test]
    fn library_is_bot() {
        let d = classifier().classify("curl/8.5.0");
        assert_eq!(d.device_type, DeviceType::Bot);
        let d = classifier().classify("collectd/5.5.1");
        assert_eq!(d.device_type, DeviceType::Bot);
        let d = classifier().classify("python-requests/2.31.0");
        assert_eq!(d.device_type, DeviceType::Bot);
    }

    #[test]
    fn huge_input_does_not_panic() {
        let c = classifier();
        let mut ua = String::from("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) ");
        while ua.len() < 100 * 1024 {
            ua.push_str("AppleWebKit/605.1.15 (KHTML, like Gecko) é😀 ");
        }
        assert_eq!(c.classify(&ua).device_type, DeviceType::Mobile);
        // Multi-byte characters straddling the cut.
        let ua = "😀".repeat(100 * 1024 / 4);
        assert_eq!(c.classify(&ua).device_type, DeviceType::Unknown);
        let ua = "a/1 ".repeat(30_000);
        let _ = c.classify(&ua);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("", 0), "");
    }

    #[test]
    fn as_str_names() {
        let all = [
            (DeviceType::Desktop, "desktop"),
            (DeviceType::Mobile, "mobile"),
            (DeviceType::Tablet, "tablet"),
            (DeviceType::Tv, "tv"),
            (DeviceType::Console, "console"),
            (DeviceType::Wearable, "wearable"),
            (DeviceType::Bot, "bot"),
            (DeviceType::Other, "other"),
            (DeviceType::Unknown, "unknown"),
        ];
        for (t, name) in all {
            assert_eq!(t.as_str(), name);
        }
    }
}
