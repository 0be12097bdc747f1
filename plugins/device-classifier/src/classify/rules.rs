//! The device-type rule table.
//!
//! No crate that builds for `wasm32-unknown-unknown` knows device *types*
//! (uap-core only names families and models), so the type comes from this
//! ordered table of User-Agent tokens. Each rule is a case-insensitive,
//! ASCII-only regex over the raw UA bytes; the **first** rule that matches
//! (and whose `unless` does not) decides.
//!
//! Order matters and follows one principle: *the more specific the evidence,
//! the earlier the rule*.
//!
//! 1. automated clients (crawler words, URLs or e-mail addresses in the UA);
//! 2. named device families and model-number conventions (a watch, a console,
//!    a TV platform, a car head unit, a media player, a laptop line, a tablet
//!    model prefix, ...), which beat the generic platform they run on;
//! 3. generic form-factor words ("tablet", "pad", "mobile", feature-phone
//!    stacks such as MIDP/WAP);
//! 4. the platform itself (Android with/without "Mobile", iOS devices,
//!    desktop operating systems).
//!
//! Only general knowledge goes in here: platform tokens, brand names and the
//! public model-number schemes of device makers (Samsung `SM-T` tablets,
//! Amazon `AFT` Fire TV, ...). Nothing refers to an individual test row.

use regex::bytes::{Regex, RegexBuilder};

use super::DeviceType::{self, *};

/// One entry of [`RULES`]: applies when any of `any` matches and none of
/// `unless` does.
pub(crate) struct Rule {
    pub device: DeviceType,
    pub any: &'static [&'static str],
    pub unless: &'static [&'static str],
}

const fn rule(device: DeviceType, any: &'static [&'static str]) -> Rule {
    Rule {
        device,
        any,
        unless: &[],
    }
}

const fn rule_unless(
    device: DeviceType,
    any: &'static [&'static str],
    unless: &'static [&'static str],
) -> Rule {
    Rule {
        device,
        any,
        unless,
    }
}

/// The ordered table. Patterns are matched case-insensitively with Unicode
/// off (`\b`, `\d`, `\w` are ASCII).
pub(crate) const RULES: &[Rule] = &[
    // ---- 1. Automated clients -------------------------------------------
    // Crawler vocabulary. `bot` must end a word ("Googlebot", "AntBot/1.0")
    // but not be the phone brand Cubot.
    rule_unless(
        Bot,
        &[
            r"bot(?:\b|_|\d)",
            "crawl",
            "spider",
            "slurp",
            r"scrap(?:er|y)\b",
            "archiver",
        ],
        &["cubot"],
    ),
    // How robots identify themselves: a contact URL or e-mail address, a
    // domain name as product, feed-fetcher subscriber counts, "compatible"
    // inside the engine comment ("(KHTML, like Gecko; compatible; X)").
    rule(
        Bot,
        &[
            r"https?://",
            r"\+https?",
            r"\bwww\.",
            "mailto:",
            r"[a-z0-9._-]@[a-z0-9-]+\.[a-z]",
            r"[a-z0-9]\.(?:com|net|org|io|ai|info|app|dev)\b",
            r"\bfeed-?id\b",
            r"\d+ subscribers",
            r"like gecko\)?;? ?compatible",
        ],
    ),
    // Monitoring, preview, audit and scripting clients, HTTP libraries and
    // scanners.
    rule(
        Bot,
        &[
            r"(?:check(?:er|link)?|monitor(?:ing)?|probe|validator|analy[sz]er|preview|synthetics|healthchecks?|uptime|lookup|scanner|research|transcoder|fetcher|favicons?|audit|loader)\b",
            "headless",
            "phantomjs",
            r"\bcurl/",
            r"\bwget/",
            r"python-(?:requests|urllib)",
            r"\bgo-http-client",
            r"\bjava/\d",
            "apache-httpclient",
            "libwww-perl",
            r"\bnutch",
            "heritrix",
            "larbin",
            "httrack",
            "yacy",
            "searchengine",
            r"[a-z]search\b",
            r"\bgoogle[-_][a-z]",
            r"[-_]google\b",
            r"\$\{jndi",
            r"\{\{",
        ],
    ),
    // "Mozilla/5.0 (compatible)" or "(compatible; Name/1.0)" alone: browsers
    // name a platform in that comment, robots often only themselves.
    rule_unless(
        Bot,
        &[r"^mozilla/[\d.]+ \(compatible(?:; ?[a-z0-9 ._-]+(?:/[a-z0-9._-]+)?)?\)"],
        &["msie", "konqueror"],
    ),
    // ---- 2. Named device families ---------------------------------------
    // Consoles, home and handheld (before TVs: a PlayStation 5 says
    // "SmartTV"; before phones: a 3DS says "like iPhone"; before desktops: an
    // Xbox says "Windows NT"). Anbernic's handhelds are `RG` + 3 digits.
    rule_unless(
        Console,
        &[
            "playstation",
            r"\bps[2-5]\b",
            "xbox",
            "nintendo",
            r"\bwiiu?\b",
            r"\bouya\b",
            r"\bshield\b",
            "gamepad",
            "retroid",
            "anbernic",
            r"\brg\d{3}[a-z]?\b",
            r"\brgcube\b",
            "razer edge",
            r"\bjxd",
            "segasaturn",
            "gameboy",
            "steam ?deck",
            r"\bswitch(?: lite| oled)?\)",
        ],
        &["android tv"],
    ),
    // Wearables: watches (watchOS, Wear OS, Samsung `SM-R` Gear / Galaxy
    // Watch), glasses and VR/AR headsets.
    rule(
        Wearable,
        &[
            "watch ?os",
            r"\bwatch\d+,\d+",
            "apple ?watch",
            r"\bwatch(?:\b|\d)",
            "galaxy watch",
            "smartwatch",
            "ticwatch",
            "zenwatch",
            r"\bsm-r\d{3}",
            "gear live",
            "moto 360",
            r"\bglass \d",
            r"\bvr\b",
            "oculus",
            r"\bquest\b",
            r"\bpico\b",
            r"\bhmd\b",
            "vive focus",
            "fitbit",
            "garmin",
            "amazfit",
        ],
    ),
    // Car head units and rear-seat screens; "T3"/"T8" are the Allwinner
    // car-unit platforms, 8227L a common car-unit board.
    rule(
        Other,
        &[
            r"\btesla/",
            "carpad",
            "car ?play",
            r"\bcar\b",
            "automotive",
            "rear seat",
            r"\bbyd\b",
            "dilink",
            r"\b8227l",
            r"\b(?:quad|octa|octopus)-core t\d\b",
        ],
    ),
    // Cameras: Nikon Coolpix, Samsung Galaxy Camera `EK-G`, Panasonic
    // Lumix `DMC-`.
    rule(Other, &["coolpix", r"\bek-g[cn]\d", r"\bdmc-[a-z]{1,3}\d"]),
    // Smart speakers (before TVs: Chromecast-based speakers say CrKey),
    // Amazon Echo (`AEO..` models), unless the UA is a speaker-control app
    // on a phone or computer.
    rule_unless(
        Other,
        &[
            "sonos",
            "homepod",
            "smartspeaker",
            "smart speaker",
            r"\becho[_ ]",
            "alexamediaplayer",
            r"\baeo[a-z]{2}\b",
            "yandexstation",
            "google home",
            "nest (?:audio|mini)",
        ],
        &["iphone", "ipad", "macbook", "imac", r"mac\d+,\d+"],
    ),
    // Portable media players (iPod before iPhone: "iPod; CPU iPhone OS").
    rule(
        Other,
        &[
            r"\bipod",
            "zune",
            r"\bfiio\b",
            "shanling",
            "cowon",
            "walkman",
            r"\bnw-[a-z]",
            r"\byp-g",
            "mp[34] ?player",
            "musicpad",
            "dvd",
            "hiby",
            "astell",
            "ibasso",
        ],
    ),
    // Peripherals and appliances: projectors, POS terminals, rugged barcode
    // handhelds (Zebra `MC`, Honeywell `CT`/`CN`/`EDA`), single-board
    // computers, fridges, desk phones.
    rule(
        Other,
        &[
            "projector",
            "xgimi",
            r"\bpos\b",
            "wpos",
            "wizarpos",
            "sunmi",
            "family hub",
            "odroid",
            "tinker board",
            "orange ?pi",
            "raspberry",
            r"\bidata\b",
            "zebra",
            r"\bmc\d{4}\b",
            r"\b(?:ct|cn|eda)\d{2}\b",
            "avaya",
        ],
    ),
    // TVs, set-top boxes, streaming sticks and smart displays: TV platforms
    // (webOS, Tizen TV, VIDAA, Roku, Fire TV `AFT`, Chromecast `CrKey`),
    // broadcast standards (HbbTV, CE-HTML, ISDB, DVB), set-top CPUs (MIPS,
    // SH4), Android TV boxes and panel words.
    rule(
        Tv,
        &[
            "smart-?tv",
            r"\bsmarttva?",
            r"\bhbbtv",
            r"\btv\b",
            "tv ?box",
            "googletv",
            "android ?tv",
            "apple ?tv",
            "tvos",
            "web0s",
            r"webos\.tv",
            "netcast",
            "nettv",
            "inettv",
            r"\bvidaa",
            r"\bvizio",
            r"\broku",
            r"\baft[a-z]",
            "crkey",
            "bravia",
            "viera",
            "humax",
            "dreambox",
            "enigma2",
            r"\bkodi\b",
            "freebox",
            r"\btivo",
            "sagemcom",
            "loewe",
            "grundig",
            "opera tv",
            "ce-html",
            "isdb",
            r"\bdvb-?[cst]",
            "youview",
            r"linux (?:mips|sh4)",
            r"stb(?:\b|\d)",
            "set-?top",
            "mi ?box",
            r"(?:\b|[-_])box(?:\b|[-_\d])",
            r"\bbox[a-z]\d",
            r"\b(?:x96|mxq|h96|t95|tx[3-9]|m8s|a95x)",
            "gtking",
            "ugoos",
            "mecool",
            "zidoo",
            "beelink",
            "tanix",
            "formuler",
            r"[a-z]{3}tv\b",
            r"(?:\b|_)(?:q|o)led",
            r"(?:\b|_)(?:uhd|fhd|4k)(?:\b|_)",
            r"\bportal(?:go|tv| mini|\+)?\b",
        ],
    ),
    // Computers whose UA names the hardware: Chromebooks, laptop lines, Mac
    // models.
    rule(
        Desktop,
        &[
            "chromebook",
            r"\bcros\b",
            "notebook",
            "netbook",
            "laptop",
            "inspiron",
            "latitude",
            "satellite",
            "aspire",
            "thinkpad",
            "ideapad",
            "pavilion",
            "vostro",
            "probook",
            "elitebook",
            r"\bmacbook",
            r"\bimac\d",
            r"\bmacmini",
            r"\bmacpro",
            r"\bpowerbook",
            r"\bmac\d+,\d+",
            r"\b2in1\b",
        ],
    ),
    // Named tablets and e-readers: iPad, Kindle Fire (`KF..`), Samsung
    // Galaxy Tab / Note tablets (`SM-T`, `SM-P`, `SM-X`, `GT-P`, `GT-N5`,
    // `GT-N8`), Lenovo Tab (`TB-`), Nexus 7/9/10, Xoom, HP Slate, MIDs.
    rule(
        Tablet,
        &[
            r"\bipad",
            r"\bkf[a-z]{2,6}\b",
            "kindle",
            r"\bsm-[tpx]\d",
            r"\bgt-p\d",
            r"\bgt-n[58]\d",
            r"\btb-?[0-9x]\d{3}",
            r"nexus (?:7|9|10)\b",
            "xoom",
            r"\bslate",
            r"\bmid\b",
            r"\bmid[-_ ]?\d",
            "pocketbook",
            "kobo",
            r"\bnook\b",
        ],
    ),
    // Named phones: iPhone, Samsung Galaxy phone prefixes, Facebook for
    // Android.
    rule(
        Mobile,
        &[
            "iphone",
            r"\biph\d",
            r"\bsm-[afgjmnswe]\d",
            r"\bgt-[is]\d",
            r"\bsgh-",
            r"\bsch-",
            "fban/fb4a",
            "redmi",
            r"\bmoto g",
        ],
    ),
    // TV model numbers: most TV makers start them with the screen diagonal
    // in inches, after an optional series letter or "LE(D)" ("55LU1222",
    // "U55E9100Q", "TF-LED32S39", "NVX-55U321"). Weaker evidence than the
    // names above, so it comes after them (and never trumps a feature-phone
    // platform).
    rule_unless(
        Tv,
        &[
            r"\bled?-?(?:19|2\d|[3-9]\d)[a-z]",
            r"(?:; [a-z]?|[-_][a-z]?)(?:19|2\d|[3-9]\d)[a-z]{1,5}[-_]?\d",
        ],
        &["kaios", r"\bmidp", r"\(mobile;"],
    ),
    // ---- 3. Generic form-factor words -----------------------------------
    // ("Tablet PC" in old Internet Explorer UAs is a Windows laptop.)
    rule_unless(
        Tablet,
        &["tablet", r"tab(?:\b|_|\d)", "pad"],
        &["windows nt"],
    ),
    // Feature-phone stacks and mobile operating systems and browsers.
    rule(
        Mobile,
        &[
            r"\bmidp",
            "cldc",
            r"\bwap",
            r"up\.browser",
            r"up\.link",
            r"\bbrew\b",
            r"\bmaui",
            r"\bmre/",
            "kaios",
            r"\(mobile;",
            "docomo",
            "kddi",
            "symbian",
            "series ?60",
            r"\bs60\b",
            "netfront",
            "obigo",
            "teleca",
            "polaris",
            "dorado",
            "ucweb",
            "sonyericsson",
            "nokia",
            "blackberry",
            r"\bbb10\b",
            "windows (?:phone|ce)",
            "iemobile",
            "opera mini",
            "opera mobi",
            r"screen-\d+x\d+",
            r"\bsie-",
            r"\bmot-",
            "mobile",
        ],
    ),
    // ---- 4. Platforms ---------------------------------------------------
    // Android without "Mobile" (which the previous rule caught) is a tablet,
    // as Google's guidance for Android browsers has it.
    rule(Tablet, &["android", r"\badr\b", "silk/"]),
    rule_unless(
        Desktop,
        &[
            "windows",
            r"\bwin(?:9x|95|98|nt|32|64|10|11)",
            "macintosh",
            "mac ?os ?x",
            "macos",
            "mac os/",
            "x11",
            "wayland",
            r"\blinux (?:x86_64|i[3-6]86|amd64)",
            r"\bx86_64\b",
            r"\bi[3-6]86\b",
            "freebsd",
            "openbsd",
            "netbsd",
            "sunos",
            "solaris",
            "haiku",
            "amigaos",
            "beos",
            r"\bos/2\b",
            "openvms",
            "desktop",
            "ms-?office",
        ],
        &["like mac os x"],
    ),
    // Apple's networking stack without a Mac architecture is iOS; OkHttp is
    // the HTTP client of Android apps.
    rule(
        Mobile,
        &["darwin/", "cfnetwork", r"\bios\b", "phone", r"\bokhttp/"],
    ),
    rule(Desktop, &[r"\blinux\b"]),
];

/// The compiled table, in the order of [`RULES`].
pub(crate) struct RuleSet {
    rules: Vec<Compiled>,
}

struct Compiled {
    device: DeviceType,
    when: Regex,
    unless: Option<Regex>,
}

fn compile(patterns: &[&str]) -> Result<Regex, String> {
    let pattern = patterns.join("|");
    RegexBuilder::new(&pattern)
        .case_insensitive(true)
        .unicode(false)
        .build()
        .map_err(|e| format!("device rule {pattern:?} failed to compile: {e}"))
}

impl RuleSet {
    pub(crate) fn new() -> Result<Self, String> {
        let rules = RULES
            .iter()
            .map(|r| {
                Ok(Compiled {
                    device: r.device,
                    when: compile(r.any)?,
                    unless: if r.unless.is_empty() {
                        None
                    } else {
                        Some(compile(r.unless)?)
                    },
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { rules })
    }

    /// The device type of the first rule that applies, if any.
    pub(crate) fn device_type(&self, user_agent: &str) -> Option<DeviceType> {
        let ua = user_agent.as_bytes();
        self.rules
            .iter()
            .find(|r| r.when.is_match(ua) && !r.unless.as_ref().is_some_and(|u| u.is_match(ua)))
            .map(|r| r.device)
    }
}
