"""Payment orders as Modern Treasury's API has them: the create request checked, the object built,
the magic account numbers read, and each state's change (no I/O here; `lifecycle` applies them).

A payment order's fate is read from its account number once, when it is created, as Modern
Treasury's sandbox does (docs "test counterparties"): `11111111...` (e.g. `111111110`) fails after
processing; `100XX` (e.g. `10001`, `10003`) completes and is then returned with code `RXX`; any other
number completes. Only the outcome and the last four digits are kept: the number itself is never
stored, logged, or echoed in an answer (not even in an error message).
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import secrets
import uuid
from typing import Any

from stdnum.us import rtn

# NACHA return reasons, by code (the codes Modern Treasury's ReturnObject knows).
RETURN_REASONS = {
    "R01": "Insufficient Funds",
    "R02": "Account Closed",
    "R03": "No Account/Unable to Locate Account",
    "R04": "Invalid Account Number Structure",
    "R05": "Unauthorized Debit to Consumer Account Using Corporate SEC Code",
    "R06": "Returned per ODFI's Request",
    "R07": "Authorization Revoked by Customer",
    "R08": "Payment Stopped",
    "R09": "Uncollected Funds",
    "R10": "Customer Advises Originator is Not Known to Receiver and/or Not Authorized to Debit",
    "R11": "Customer Advises Entry Not in Accordance with the Terms of the Authorization",
    "R12": "Account Sold to Another DFI",
    "R13": "Invalid ACH Routing Number",
    "R14": "Representative Payee Deceased or Unable to Continue in That Capacity",
    "R15": "Beneficiary or Account Holder (Other Than a Representative Payee) Deceased",
    "R16": "Account Frozen/Entry Returned per OFAC Instruction",
    "R17": "File Record Edit Criteria",
    "R18": "Improper Effective Entry Date",
    "R19": "Amount Field Error",
    "R20": "Non-Transaction Account",
    "R21": "Invalid Company Identification",
    "R22": "Invalid Individual ID Number",
    "R23": "Credit Entry Refused by Receiver",
    "R24": "Duplicate Entry",
    "R25": "Addenda Error",
    "R26": "Mandatory Field Error",
    "R27": "Trace Number Error",
    "R28": "Routing Number Check Digit Error",
    "R29": "Corporate Customer Advises Not Authorized",
    "R30": "RDFI Not Participant in Check Truncation Program",
    "R31": "Permissible Return Entry (CCD and CTX only)",
    "R32": "RDFI Non-Settlement",
    "R33": "Return of XCK Entry",
    "R34": "Limited Participation DFI",
    "R35": "Return of Improper Debit Entry",
    "R36": "Return of Improper Credit Entry",
    "R37": "Source Document Presented for Payment",
    "R38": "Stop Payment on Source Document",
    "R39": "Improper Source Document/Source Document Presented for Payment",
    "R40": "Return of ENR Entry by Federal Government Agency",
    "R41": "Invalid Transaction Code",
    "R42": "Routing Number/Check Digit Error",
    "R43": "Invalid DFI Account Number",
    "R44": "Invalid Individual ID Number/Identification Number",
    "R45": "Invalid Individual Name/Company Name",
    "R46": "Invalid Representative Payee Indicator",
    "R47": "Duplicate Enrollment",
    "R50": "State Law Affecting RCK Acceptance",
    "R51": "Item Related to RCK Entry is Ineligible or RCK Entry is Improper",
    "R52": "Stop Payment on Item Related to RCK Entry",
    "R53": "Item and RCK Entry Presented for Payment",
    "R61": "Misrouted Return",
    "R62": "Return of Erroneous or Reversing Debit",
    "R67": "Duplicate Return",
    "R68": "Untimely Return",
    "R69": "Field Error(s)",
    "R70": "Permissible Return Entry Not Accepted/Return Not Requested by ODFI",
    "R71": "Misrouted Dishonored Return",
    "R72": "Untimely Dishonored Return",
    "R73": "Timely Original Return",
    "R74": "Corrected Return",
    "R75": "Return Not a Duplicate",
    "R76": "No Errors Found",
    "R77": "Non-Acceptance of R62 Dishonored Return",
    "R80": "IAT Entry Coding Error",
    "R81": "Non-Participant in IAT Program",
    "R82": "Invalid Foreign Receiving DFI Identification",
    "R83": "Foreign Receiving DFI Unable to Settle",
    "R84": "Entry Not Processed by Gateway",
    "R85": "Incorrectly Coded Outbound International Payment",
}
FAILURE_REASON = "The receiving bank rejected the payment before settlement (simulated)."
ACCOUNT_NUMBER_RE = re.compile(r"[0-9]{4,17}")
FAIL_PREFIX = "11111111"
RETURN_RE = re.compile(r"100([0-9]{2})")

# The webhook event each state is entered with (Modern Treasury's payment-order events).
EVENTS = {
    "processing": "begin_processing",
    "sent": "finish_processing",
    "completed": "completed",
    "failed": "failed",
    "returned": "returned",
}
FINAL = ("failed", "returned")  # nothing follows them; "completed" is final unless returned


class ApiError(Exception):
    """Modern Treasury's error answer: `{"errors": {"code", "message", "parameter"}}`. The message
    is always one of ours, never the caller's input."""

    def __init__(
        self, status: int, code: str, message: str, parameter: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.parameter = parameter
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"errors": {"code": self.code, "message": self.message, "parameter": self.parameter}}


def invalid(parameter: str, message: str) -> ApiError:
    return ApiError(422, "parameter_invalid", message, parameter)


def missing(parameter: str) -> ApiError:
    return ApiError(422, "parameter_missing", f"{parameter} is missing", parameter)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """Where an order ends: "completed", "failed", or "returned" (with `return_code`)."""

    end: str
    return_code: str | None = None


def outcome_of(account_number: str) -> Outcome:
    if account_number.startswith(FAIL_PREFIX):
        return Outcome("failed")
    match = RETURN_RE.fullmatch(account_number)
    if match and f"R{match[1]}" in RETURN_REASONS:
        return Outcome("returned", f"R{match[1]}")
    return Outcome("completed")


def next_status(status: str, outcome: Outcome) -> str | None:
    """The state after `status` for an order bound for `outcome`; None: it has ended."""
    if status == "approved":
        return "processing"
    if status == "processing":
        return "failed" if outcome.end == "failed" else "sent"
    if status == "sent":
        return "completed"
    if status == "completed" and outcome.end == "returned":
        return "returned"
    return None


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _str_map(value: Any, parameter: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise invalid(parameter, f"{parameter} must be an object of strings")
    return dict(value)


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise invalid(name, f"{name} must be a string")
    return value


def _one(value: Any, parameter: str) -> dict[str, Any]:
    if value is None:
        raise missing(parameter)
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
        raise invalid(parameter, f"{parameter} must hold exactly one entry")
    return value[0]


@dataclasses.dataclass(frozen=True)
class Checked:
    """A valid create request, without the account number: its last four and its outcome instead."""

    body: dict[str, Any]  # the request, less receiving_account
    account: dict[str, Any]  # receiving_account, less its account_details
    last4: str
    routing_number: str
    outcome: Outcome


def check_create(body: Any, originating_account_id: str) -> Checked:
    """The create request checked as Modern Treasury checks an ACH credit (422 otherwise)."""
    if not isinstance(body, dict):
        raise ApiError(400, "parameter_invalid", "The request body must be a JSON object")
    for name in ("amount", "direction", "type", "originating_account_id"):
        if body.get(name) is None:
            raise missing(name)
    amount = body["amount"]
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise invalid("amount", "amount must be a positive integer of cents")
    if body["type"] != "ach":
        raise invalid("type", "type must be ach (the only payment type this simulator sends)")
    if body["direction"] != "credit":
        raise invalid("direction", "direction must be credit (the only direction this simulator sends)")
    if body.get("currency", "USD") != "USD":
        raise invalid("currency", "currency must be USD for an ACH payment order")
    if body["originating_account_id"] != originating_account_id:
        raise invalid("originating_account_id", "originating_account_id is not an internal account of this org")
    if body.get("priority", "normal") not in ("normal", "high"):
        raise invalid("priority", "priority must be normal or high")
    effective_date = _optional_str(body, "effective_date")
    if effective_date is not None:
        try:
            datetime.date.fromisoformat(effective_date)
        except ValueError:
            raise invalid("effective_date", "effective_date must be a date (YYYY-MM-DD)") from None
    for name in ("description", "external_id", "subtype", "statement_descriptor", "originating_party_name"):
        _optional_str(body, name)
    _str_map(body.get("metadata"), "metadata")
    if body.get("receiving_account_id") is not None:
        raise invalid(
            "receiving_account_id", "the simulator takes the receiving account inline (receiving_account) only"
        )
    account = body.get("receiving_account")
    if account is None:
        raise missing("receiving_account")
    if not isinstance(account, dict):
        raise invalid("receiving_account", "receiving_account must be an object")
    detail = _one(account.get("account_details"), "receiving_account.account_details")
    number = detail.get("account_number")
    if not isinstance(number, str) or not ACCOUNT_NUMBER_RE.fullmatch(number):
        raise invalid(
            "receiving_account.account_details.account_number", "account_number must be 4 to 17 digits for ACH"
        )
    if detail.get("account_number_type", "other") != "other":
        raise invalid(
            "receiving_account.account_details.account_number_type", "account_number_type must be other for ACH"
        )
    routing = _one(account.get("routing_details"), "receiving_account.routing_details")
    if routing.get("routing_number_type") != "aba":
        raise invalid("receiving_account.routing_details.routing_number_type", "routing_number_type must be aba")
    routing_number = routing.get("routing_number")
    if not isinstance(routing_number, str) or not rtn.is_valid(routing_number):
        raise invalid(
            "receiving_account.routing_details.routing_number", "routing_number is not a valid ABA routing number"
        )
    if account.get("account_type", "checking") not in ("checking", "savings", "other"):
        raise invalid("receiving_account.account_type", "account_type must be checking, savings or other")
    if account.get("party_type") not in (None, "business", "individual"):
        raise invalid("receiving_account.party_type", "party_type must be business or individual")
    for name in ("party_name", "name"):
        if account.get(name) is not None and not isinstance(account[name], str):
            raise invalid(f"receiving_account.{name}", f"{name} must be a string")
    _str_map(account.get("metadata"), "receiving_account.metadata")
    return Checked(
        body={k: v for k, v in body.items() if k != "receiving_account"},
        account={k: v for k, v in account.items() if k != "account_details"},
        last4=number[-4:],
        routing_number=routing_number,
        outcome=outcome_of(number),
    )


def _detail(kind: str, stamp: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "object": kind,
        "live_mode": False,
        **fields,
        "created_at": stamp,
        "updated_at": stamp,
        "discarded_at": None,
    }


def new_order(req: Checked) -> dict[str, Any]:
    """The payment order Modern Treasury answers for a created ACH credit (status `approved`)."""
    stamp = now_iso()
    b, a = req.body, req.account
    receiving_account = {
        **_detail("external_account", stamp),
        "account_type": a.get("account_type", "checking"),
        "party_name": a.get("party_name") or "",
        "party_type": a.get("party_type"),
        "party_address": None,
        "name": a.get("name"),
        "counterparty_id": None,
        "metadata": _str_map(a.get("metadata"), "receiving_account.metadata"),
        "verification_status": "unverified",
        "contact_details": [],
        "ledger_account_id": None,
        "account_details": [
            _detail("account_detail", stamp, account_number_safe=req.last4, account_number_type="other")
        ],
        "routing_details": [
            _detail(
                "routing_detail",
                stamp,
                routing_number=req.routing_number,
                routing_number_type="aba",
                payment_type="ach",
                bank_name="Simulated Bank",
                bank_address=None,
            )
        ],
    }
    nulls = (
        "counterparty_id accounting_category_id accounting_ledger_class_id charge_bearer foreign_exchange_indicator"
        " foreign_exchange_contract foreign_exchange_rate originating_party_address ultimate_originating_party_name"
        " ultimate_originating_party_identifier ultimate_receiving_party_name ultimate_receiving_party_identifier"
        " ultimate_originating_account ultimate_originating_account_id ultimate_originating_account_type"
        " send_remittance_advice expires_at process_after purpose remittance_information ledger_transaction_id"
        " current_return current_hold vendor_failure_reason vendor_attributes batch_id"
    ).split()
    return {
        "id": str(uuid.uuid4()),
        "object": "payment_order",
        "live_mode": False,
        "created_at": stamp,
        "updated_at": stamp,
        "type": "ach",
        "subtype": b.get("subtype"),
        "amount": b["amount"],
        "currency": "USD",
        "direction": "credit",
        "priority": b.get("priority", "normal"),
        "originating_account_id": b["originating_account_id"],
        "originating_account_type": "internal_account",
        "receiving_account_id": receiving_account["id"],
        "receiving_account_type": "external_account",
        "receiving_account": receiving_account,
        "effective_date": b.get("effective_date") or datetime.datetime.now(datetime.UTC).date().isoformat(),
        "description": b.get("description"),
        "statement_descriptor": b.get("statement_descriptor"),
        "originating_party_name": b.get("originating_party_name"),
        "metadata": _str_map(b.get("metadata"), "metadata"),
        "external_id": b.get("external_id"),
        "status": "approved",
        "accounting": {"account_id": None, "class_id": None},
        "nsf_protected": False,
        "reconciliation_status": "unreconciled",
        "transaction_ids": [],
        "reference_numbers": [],
        **dict.fromkeys(nulls),
    }


def enter(order: dict[str, Any], status: str, *, return_code: str | None = None) -> None:
    """Move `order` into `status`, with what Modern Treasury adds on the way in."""
    stamp = now_iso()
    order["status"] = status
    order["updated_at"] = stamp
    if status == "sent":
        trace = "".join(secrets.choice("0123456789") for _ in range(15))
        order["reference_numbers"].append(
            _detail("payment_reference", stamp, reference_number=trace, reference_number_type="ach_trace_number")
        )
    elif status == "completed":
        order["transaction_ids"] = [str(uuid.uuid4())]
        order["reconciliation_status"] = "reconciled"
    elif status == "failed":
        order["vendor_failure_reason"] = FAILURE_REASON
    elif status == "returned":
        code = return_code or "R01"
        order["current_return"] = {
            **_detail("return", stamp),
            "amount": order["amount"],
            "currency": order["currency"],
            "code": code,
            "reason": RETURN_REASONS.get(code, "Returned"),
            "status": "completed",
            "type": "ach",
            "role": "receiving",
            "returnable_id": order["id"],
            "returnable_type": "payment_order",
            "transaction_id": str(uuid.uuid4()),
            "transaction_line_item_id": None,
            "internal_account_id": order["originating_account_id"],
            "ledger_transaction_id": None,
            "reconciliation_status": "reconciled",
            "reference_numbers": [],
            "failure_reason": None,
            "date_of_death": None,
            "additional_information": None,
            "corrections": None,
            "current_return": None,
            "data": None,
        }
