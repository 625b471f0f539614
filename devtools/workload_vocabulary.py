"""The demo workload's vocabularies: names, companies, job titles, pages, campaigns, and
the weights and effects the generator (devtools/workload.py) draws them with."""

from __future__ import annotations

from domain.events import ActivityKind
from domain.firmographics import SOURCES

FIRST_NAMES = (
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Chris",
    "Karen",
    "Daniel",
    "Nancy",
    "Matthew",
    "Lisa",
    "Anthony",
    "Emily",
    "Mark",
    "Ashley",
    "Priya",
    "Rahul",
    "Wei",
    "Mei",
    "Hiroshi",
    "Yuki",
    "Lukas",
    "Anna",
    "Jonas",
    "Lea",
    "Pierre",
    "Camille",
    "Sven",
    "Ingrid",
    "Carlos",
    "Sofia",
    "Mateus",
    "Ana",
    "Olga",
    "Dmitri",
    "Fatima",
    "Omar",
    "Aisha",
    "Kwame",
    "Liam",
    "Noah",
    "Emma",
    "Olivia",
    "Sanjay",
    "Deepa",
    "Tom",
    "Kate",
)
LAST_NAMES = (
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Wilson",
    "Anderson",
    "Taylor",
    "Thomas",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Thompson",
    "White",
    "Harris",
    "Clark",
    "Lewis",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Patel",
    "Sharma",
    "Singh",
    "Chen",
    "Wang",
    "Li",
    "Tanaka",
    "Suzuki",
    "Sato",
    "Mueller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Dubois",
    "Laurent",
    "Bernard",
    "van Dijk",
    "de Vries",
    "Jansen",
    "Silva",
    "Santos",
    "Oliveira",
    "Ivanov",
    "Petrov",
    "Kowalski",
    "Nowak",
    "O'Brien",
    "Murphy",
    "Nguyen",
    "Kim",
)
COMPANY_A = (
    "Blue",
    "North",
    "Bright",
    "Iron",
    "Silver",
    "Red",
    "Green",
    "Quantum",
    "Apex",
    "Nova",
    "Summit",
    "Cedar",
    "Harbor",
    "Granite",
    "Vertex",
    "Atlas",
    "Polar",
    "Crimson",
    "Swift",
    "Clear",
    "Open",
    "Deep",
    "Solid",
    "True",
    "Rapid",
    "Lumen",
    "Orbit",
    "Pioneer",
)
COMPANY_B = (
    "Wave",
    "Peak",
    "Stone",
    "Bridge",
    "Field",
    "Path",
    "Forge",
    "Works",
    "Labs",
    "Logic",
    "Point",
    "Line",
    "Scale",
    "Cloud",
    "Data",
    "Systems",
    "Dynamics",
    "Sphere",
    "Mark",
    "Gate",
    "Flow",
    "Stack",
    "Grid",
    "Signal",
)
COMPANY_SUFFIX = (
    "",
    "",
    "",
    " Inc.",
    " LLC",
    " Ltd",
    " GmbH",
    " Group",
    " Technologies",
    " Solutions",
    " Analytics",
    " Health",
    " Partners",
    " & Co",
    " AG",
    " S.A.",
    " Holdings",
)
TLDS = (".com", ".com", ".com", ".io", ".co", ".de", ".net", ".ai")
FREE_MAIL = (
    "gmail.com",
    "gmail.com",
    "yahoo.com",
    "hotmail.com",
    "outlook.com",
    "icloud.com",
    "gmx.de",
    "web.de",
    "protonmail.com",
)

# Industries as companies describe themselves: mostly the vocabulary's words in some
# casing, sometimes a synonym the vocabulary does not know (it maps to "other").
INDUSTRY_SYNONYMS = {
    "software": ("SaaS", "Computer Software"),
    "fintech": ("Financial Services",),
    "healthcare": ("Hospital & Health Care",),
    "retail": ("E-commerce",),
}

COUNTRY_WEIGHTS = {
    "US": 34,
    "GB": 10,
    "DE": 9,
    "FR": 6,
    "NL": 4,
    "CA": 6,
    "AU": 4,
    "IN": 8,
    "BR": 5,
    "JP": 3,
    "ES": 4,
    "SE": 2,
    "MX": 2,
    "SG": 2,
    "PL": 1,  # the last ones map to "other"
}
SOURCE_WEIGHTS = {
    "organic": 22,
    "paid_search": 18,
    "paid_social": 12,
    "referral": 7,
    "event": 7,
    "outbound": 12,
    "partner": 5,
    "content": 10,
    "webinar": 6,
    "other": 1,
}
# Effect of the acquisition channel on propensity (log-odds): warm channels convert.
SOURCE_EFFECT = {
    "organic": 0.2,
    "paid_search": 0.0,
    "paid_social": -0.4,
    "referral": 0.7,
    "event": 0.4,
    "outbound": -0.3,
    "partner": 0.5,
    "content": 0.0,
    "webinar": 0.3,
    "other": 0.0,
}

# The channels are the domain's vocabulary: a source it does not know would score as "other".
if set(SOURCE_WEIGHTS) != set(SOURCES) or set(SOURCE_EFFECT) != set(SOURCES):
    raise ImportError("workload sources out of step with domain.firmographics.SOURCES")

# Departments use domain.firmographics.DEPARTMENTS codes: 0 other .. 8 executive.
DEPT_WEIGHTS = (10, 22, 10, 20, 14, 7, 8, 4, 5)
# Seniority levels 0 (student/intern) .. 6 (C-level/founder), as domain.firmographics ranks.
LEVEL_WEIGHTS = (6, 15, 30, 22, 13, 8, 6)
LEVEL_EFFECT = (-1.8, -0.6, 0.0, 0.3, 0.7, 0.8, 0.6)

FUNCTIONS: dict[int, tuple[str, ...]] = {
    0: ("Product", "Customer Success", "Strategy", "Legal", "Projects"),
    1: ("Engineering", "Software Engineering", "Platform Engineering", "R&D", "DevOps"),
    2: ("IT", "IT Operations", "Infrastructure", "Information Security", "Systems"),
    3: ("Marketing", "Growth", "Demand Gen", "Brand", "Product Marketing", "Content"),
    4: ("Sales", "Business Development", "Revenue", "Enterprise Sales", "Sales Operations"),
    5: ("Finance", "Procurement", "Accounting", "FP&A"),
    6: ("Operations", "Supply Chain", "Logistics", "Business Operations"),
    7: ("HR", "People", "Talent Acquisition", "People Operations"),
    8: ("Strategy",),
}
C_LEVEL: dict[int, tuple[str, ...]] = {
    0: ("Chief Product Officer", "CPO", "Chief Strategy Officer"),
    1: ("CTO", "CTO & Co-Founder", "Chief Technology Officer", "Co-founder, CTO"),
    2: ("CIO", "CISO", "Chief Information Officer"),
    3: ("CMO", "Chief Marketing Officer"),
    4: ("CRO", "Chief Revenue Officer"),
    5: ("CFO", "Chief Financial Officer"),
    6: ("COO", "Chief Operating Officer"),
    7: ("Chief People Officer", "CHRO"),
    8: (
        "CEO",
        "Founder",
        "Co-Founder & CEO",
        "Owner",
        "President",
        "Founder/CEO",
        "Managing Director",
        "CEO and Founder",
    ),
}
LEVEL_TEMPLATES: dict[int, tuple[str, ...]] = {
    5: (
        "VP {f}",
        "VP of {f}",
        "Vice President, {f}",
        "Vice President of {f}",
        "SVP {f}",
        "EVP, {f}",
        "VP, {f}",
    ),
    4: (
        "Director of {f}",
        "{f} Director",
        "Head of {f}",
        "Sr. Director, {f}",
        "Director, {f}",
        "Global Head of {f}",
    ),
    3: ("{f} Manager", "Manager, {f}", "Senior {f} Manager", "{f} Team Lead", "{f} Lead"),
}
INDIVIDUAL: dict[int, tuple[str, ...]] = {
    0: (
        "Product Manager",
        "Consultant",
        "Project Manager",
        "Product Owner",
        "Analyst",
        "Customer Success Manager",
    ),
    1: (
        "Software Engineer",
        "Sr. Software Engineer",
        "Senior Backend Engineer",
        "Solutions Architect",
        "Data Engineer",
        "Staff Engineer",
        "Full Stack Developer",
    ),
    2: ("Network Engineer", "Security Analyst", "IT Specialist", "Systems Administrator"),
    3: (
        "Marketing Specialist",
        "Growth Marketer",
        "SEO Specialist",
        "Marketing Analyst",
        "Content Strategist",
    ),
    4: ("Account Executive", "Sr. Account Executive", "Sales Engineer", "Sales Consultant"),
    5: ("Financial Analyst", "Senior Accountant", "Procurement Specialist"),
    6: ("Operations Analyst", "Logistics Specialist", "Supply Chain Analyst"),
    7: ("HR Specialist", "Recruiter", "Talent Partner"),
    8: ("Chief of Staff", "Senior Consultant"),
}
JUNIOR: dict[int, tuple[str, ...]] = {
    0: ("Associate", "Junior Analyst", "Office Coordinator"),
    1: ("Junior Developer", "Jr. Software Engineer", "Associate Engineer"),
    2: ("IT Support Associate", "Help Desk Representative"),
    3: ("Marketing Coordinator", "Marketing Associate", "Social Media Coordinator"),
    4: ("Sales Representative", "SDR", "BDR", "Inside Sales Rep"),
    5: ("Jr. Accountant", "Associate, Finance", "Finance Coordinator"),
    6: ("Operations Coordinator", "Logistics Coordinator"),
    7: ("HR Coordinator", "Recruiting Coordinator"),
    8: ("Executive Assistant", "Associate"),
}
STUDENT = (
    "student",
    "Student",
    "MBA Student",
    "PhD student",
    "Intern",
    "Trainee",
    "Executive Assistant to the CEO",
)
STUDENT_BY_DEPT: dict[int, tuple[str, ...]] = {
    1: ("Software Engineering Intern",),
    3: ("Marketing Intern",),
    4: ("Sales Trainee",),
    5: ("Finance Intern",),
    7: ("HR Intern",),
}
ODD_TITLES = ("n/a", "-", "Other", "Freelancer", "Self-employed", "Member of Technical Staff")

PAGES = (
    "/",
    "/product",
    "/product/integrations",
    "/customers",
    "/blog/lead-scoring-101",
    "/blog/intent-data",
    "/docs/getting-started",
    "/security",
    "/about",
    "/careers",
    "/case-studies/acme",
    "/features/analytics",
)
CAMPAIGNS = (
    "welcome-series-1",
    "welcome-series-2",
    "nurture-q1-3",
    "product-update-jan",
    "webinar-invite",
    "newsletter-weekly",
    "abm-enterprise-2",
    "reactivation-1",
)
FORMS = ("contact-us", "newsletter", "trial-signup", "event-registration", "gated-content")
WEBINARS = ("scoring-masterclass", "revops-roundtable", "product-tour-live", "customer-panel-q1")
ASSETS = (
    "whitepaper-intent-signals",
    "ebook-b2b-funnel",
    "report-state-of-revops",
    "checklist-lead-routing",
    "case-study-fintech",
    "roi-calculator",
)
UTM = ("google", "linkedin", "newsletter", "partner-portal", "g2", "twitter")

CONVERT_REASONS = ("opportunity_created", "sql_accepted", "closed_won", "trial_started")
DISQUALIFY_REASONS = (
    "no_budget",
    "not_a_fit",
    "chose_competitor",
    "unresponsive",
    "student_or_job_seeker",
    "bad_contact_info",
    "duplicate",
    "too_small",
)

KINDS = (
    ActivityKind.PAGE_VIEW,
    ActivityKind.EMAIL_OPEN,
    ActivityKind.EMAIL_CLICK,
    ActivityKind.FORM_SUBMIT,
    ActivityKind.DEMO_REQUEST,
    ActivityKind.PRICING_PAGE,
    ActivityKind.WEBINAR,
    ActivityKind.CONTENT_DOWNLOAD,
    ActivityKind.OTHER,
)
# Base mix of activity kinds; intent kinds (demo, pricing) are set per lead from its
# propensity. "other" is what trackers send that fits no kind (chats, booth scans).
BASE_MIX = (0.40, 0.26, 0.09, 0.05, 0.0, 0.0, 0.04, 0.07, 0.01)
SIZE_BANDS = ((1.0, 2.0), (1.7, 2.7), (2.3, 3.5), (3.0, 4.7))  # log10(employees)


def property_templates() -> dict[ActivityKind, tuple[dict[str, str], ...]]:
    """Every property dict an activity can carry, built once; events copy one."""
    page = [{"url": p} for p in PAGES] + [
        {"url": p, "utm_source": u} for p in PAGES[:4] for u in UTM
    ]
    return {
        ActivityKind.PAGE_VIEW: tuple(page),
        ActivityKind.EMAIL_OPEN: tuple({"campaign": c} for c in CAMPAIGNS),
        ActivityKind.EMAIL_CLICK: tuple(
            {"campaign": c, "url": p} for c in CAMPAIGNS for p in PAGES[:6]
        ),
        ActivityKind.FORM_SUBMIT: tuple({"form": f, "url": f"/forms/{f}"} for f in FORMS),
        ActivityKind.DEMO_REQUEST: (
            {"form": "demo-request", "url": "/demo"},
            {"form": "demo-request", "url": "/pricing", "plan": "enterprise"},
            {"form": "contact-sales", "url": "/contact-sales"},
        ),
        ActivityKind.PRICING_PAGE: (
            {"url": "/pricing"},
            {"url": "/pricing/enterprise"},
            {"url": "/pricing#compare"},
            {"url": "/pricing", "utm_source": "google"},
        ),
        ActivityKind.WEBINAR: tuple(
            {"webinar": w, "attended": a} for w in WEBINARS for a in ("true", "false")
        ),
        ActivityKind.CONTENT_DOWNLOAD: tuple({"asset": a} for a in ASSETS),
        ActivityKind.OTHER: (
            {"type": "chat_started", "url": "/pricing"},
            {"type": "chat_started", "url": "/"},
            {"type": "booth_scan", "event": "saastr-2026"},
            {"type": "meeting_booked"},
        ),
    }


PROPERTIES = property_templates()
