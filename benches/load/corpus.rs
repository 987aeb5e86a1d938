//! The JSON bodies of `BENCH_MODE=bodies`: deterministic (the same seed
//! gives the same bytes on every machine and run), plain Rust, one small
//! function per corpus so either can be swapped for another generator.

use bytes::Bytes;

/// The corpora `BENCH_CORPUS` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corpus {
    /// A JSON array of uniform product objects: compresses very well.
    List,
    /// A catalogue page: varied names, descriptions, prices, SKUs and URLs;
    /// compresses less well.
    Catalogue,
}

impl Corpus {
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim() {
            "list" => Some(Self::List),
            "catalogue" | "catalog" => Some(Self::Catalogue),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::List => "list",
            Self::Catalogue => "catalogue",
        }
    }

    /// The body of key `seed`: valid JSON of at most `len` bytes (and at
    /// least one object), within one object's length of `len`.
    pub fn body(self, len: usize, seed: u64) -> Bytes {
        match self {
            Self::List => list(len, seed),
            Self::Catalogue => catalogue(len, seed),
        }
    }
}

/// splitmix64: small, fast and good enough for test data.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed ^ 0x5EED_B0D1_E5C0_FFEE)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }
}

/// A generated list page: `[{"id":..,"name":..,...},...]`, the shape of
/// `BENCH_BODY`'s object in the default mode, repeated with other values.
fn list(len: usize, seed: u64) -> Bytes {
    const CATEGORIES: &[&str] = &[
        "books", "garden", "toys", "kitchen", "sports", "music", "tools", "games",
    ];
    let mut rng = Rng::new(seed);
    let mut out = String::with_capacity(len);
    out.push('[');
    let mut id = seed * 1_000_000;
    loop {
        let category = rng.pick(CATEGORIES);
        let item = format!(
            r#"{{"id":{id},"name":"{category} product {id}","category":"{category}","price":{}.{:02},"in_stock":{},"created_at":"2026-{:02}-{:02}T{:02}:{:02}:{:02}Z"}}"#,
            rng.below(500),
            rng.below(100),
            rng.below(4) != 0,
            1 + rng.below(12),
            1 + rng.below(28),
            rng.below(24),
            rng.below(60),
            rng.below(60),
        );
        let first = out.len() == 1;
        if !first && out.len() + 1 + item.len() + 1 > len {
            break;
        }
        if !first {
            out.push(',');
        }
        out.push_str(&item);
        id += 1;
    }
    out.push(']');
    Bytes::from(out)
}

/// A generated catalogue page: `{"page":..,"items":[...],"next":..}` with
/// items of varied titles, brands, prose descriptions, prices, ratings,
/// SKUs, product and image URLs.
fn catalogue(len: usize, seed: u64) -> Bytes {
    const ADJECTIVES: &[&str] = &[
        "Brushed",
        "Compact",
        "Classic",
        "Wireless",
        "Foldable",
        "Vintage",
        "Heavy-Duty",
        "Ergonomic",
        "Organic",
        "Stainless",
        "Portable",
        "Handmade",
        "Slim",
        "Waterproof",
        "Quiet",
        "Modular",
        "Insulated",
        "Adjustable",
        "Rechargeable",
        "Premium",
    ];
    const MATERIALS: &[&str] = &[
        "Oak",
        "Walnut",
        "Steel",
        "Bamboo",
        "Linen",
        "Ceramic",
        "Leather",
        "Glass",
        "Copper",
        "Cotton",
        "Wool",
        "Aluminium",
        "Marble",
        "Rattan",
        "Cork",
    ];
    const NOUNS: &[&str] = &[
        "Desk Lamp",
        "Chair",
        "Kettle",
        "Backpack",
        "Headphones",
        "Blender",
        "Bookshelf",
        "Rug",
        "Mug Set",
        "Drill",
        "Tent",
        "Jacket",
        "Speaker",
        "Planter",
        "Knife Block",
        "Throw Blanket",
        "Coffee Grinder",
        "Camera Bag",
        "Bike Light",
        "Wall Clock",
    ];
    const CATEGORIES: &[&str] = &[
        "lighting",
        "furniture",
        "kitchen",
        "outdoor",
        "audio",
        "tools",
        "textiles",
        "garden",
        "office",
        "travel",
    ];
    const WORDS: &[&str] = &[
        "designed",
        "for",
        "everyday",
        "use",
        "with",
        "a",
        "durable",
        "finish",
        "that",
        "resists",
        "scratches",
        "and",
        "stains",
        "the",
        "soft",
        "touch",
        "surface",
        "keeps",
        "its",
        "colour",
        "after",
        "years",
        "of",
        "washing",
        "easy",
        "to",
        "assemble",
        "in",
        "minutes",
        "without",
        "tools",
        "fits",
        "most",
        "spaces",
        "comes",
        "two",
        "year",
        "warranty",
        "made",
        "from",
        "responsibly",
        "sourced",
        "materials",
        "lightweight",
        "yet",
        "sturdy",
        "enough",
        "daily",
        "commute",
        "weekend",
        "trips",
        "low",
        "energy",
        "consumption",
        "quiet",
        "operation",
        "even",
        "at",
        "full",
        "power",
        "includes",
        "replaceable",
        "filter",
        "cable",
        "storage",
        "pouch",
        "dishwasher",
        "safe",
        "parts",
        "non-slip",
        "base",
        "protects",
        "your",
        "table",
        "tested",
        "by",
        "our",
        "team",
        "over",
        "hundred",
        "hours",
        "available",
        "several",
        "colours",
        "sizes",
        "matches",
        "rest",
        "collection",
        "gift",
        "ready",
        "packaging",
        "recycled",
        "cardboard",
    ];
    const BRANDS: &[&str] = &[
        "Nordvik",
        "Halden",
        "Aster & Co",
        "Brightwell",
        "Kestrel",
        "Lumo",
        "Marlow",
        "Oakridge",
        "Pelican Works",
        "Quill",
        "Sundara",
        "Tamsin",
        "Velo",
        "Wrenfield",
    ];
    let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(7));
    let page = 1 + seed;
    let category = rng.pick(CATEGORIES);
    let head = format!(
        r#"{{"page":{page},"total":{},"currency":"EUR","category":"{category}","items":["#,
        1000 + rng.below(90_000)
    );
    let tail = format!(
        r#"],"next":"https://shop.example.com/c/{category}?page={}&sort=popular"}}"#,
        page + 1
    );
    let mut out = String::with_capacity(len);
    out.push_str(&head);
    let mut first = true;
    loop {
        let (adjective, material, noun) =
            (rng.pick(ADJECTIVES), rng.pick(MATERIALS), rng.pick(NOUNS));
        let title = format!("{adjective} {material} {noun}");
        let slug = title.to_ascii_lowercase().replace([' ', '&'], "-");
        let sku = rng.next();
        let words = 12 + rng.below(30);
        let mut description = String::new();
        for i in 0..words {
            if i > 0 {
                description.push_str(if rng.below(9) == 0 { ". " } else { " " });
            }
            description.push_str(rng.pick(WORDS));
        }
        description.push('.');
        let price = 5 + rng.below(600);
        let cents = rng.pick(&["00", "49", "90", "95", "99"]);
        let item = format!(
            concat!(
                r#"{{"sku":"{sku_short:08X}","name":"{title}","brand":"{brand}","#,
                r#""description":"{description}","price":{price}.{cents},"#,
                r#""list_price":{list_price}.00,"rating":{rating_int}.{rating_dec},"#,
                r#""reviews":{reviews},"stock":{stock},"#,
                r#""url":"https://shop.example.com/p/{slug}-{sku_short:08x}","#,
                r#""image":"https://cdn.example.com/img/{sku:016x}/{w}x{w}.webp","#,
                r#""tags":["{category}","{tag}"],"updated_at":"2026-{mon:02}-{day:02}T{hh:02}:{mm:02}:{ss:02}Z"}}"#,
            ),
            sku_short = sku >> 32,
            title = title,
            brand = rng.pick(BRANDS),
            description = description,
            price = price,
            cents = cents,
            list_price = price + rng.below(100),
            rating_int = 1 + rng.below(4),
            rating_dec = rng.below(10),
            reviews = rng.below(20_000),
            stock = rng.below(250),
            slug = slug,
            sku = sku,
            w = [320, 480, 640, 800][rng.below(4) as usize],
            category = category,
            tag = rng.pick(MATERIALS).to_ascii_lowercase(),
            mon = 1 + rng.below(12),
            day = 1 + rng.below(28),
            hh = rng.below(24),
            mm = rng.below(60),
            ss = rng.below(60),
        );
        let sep = usize::from(!first);
        if !first && out.len() + sep + item.len() + tail.len() > len {
            break;
        }
        if !first {
            out.push(',');
        }
        out.push_str(&item);
        first = false;
    }
    out.push_str(&tail);
    Bytes::from(out)
}
