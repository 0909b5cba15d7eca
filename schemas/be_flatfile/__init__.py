"""The Belgian ERP's flat file: pydantic models, a codec and the mail conventions (docs/belgian-flat-file.md).

    data = encode(BeFlatFile(header=BeFileHeader(file_type="REQ", correlation_token=tok, sender="PLU-HUB"),
                             records=[BeContractSwitch(...)]))
    file = decode(data)          # FlatFileError (an UnparseablePayload) names line, field and expectation

`__all__` lists the models only, because schemas/__init__ registers a module's `__all__` as schemas;
the codec and the mail conventions are imported by name.
"""

from schemas.be_flatfile.codec import ENCODING, RECORD_LENGTH, decode, encode, layout  # noqa: F401
from schemas.be_flatfile.envelope import attachment_name, subject_tag, token_in_subject  # noqa: F401
from schemas.be_flatfile.fields import FlatFileError  # noqa: F401
from schemas.be_flatfile.models import (BeAccepted, BeAccountChange, BeAccountLinked,  # noqa: F401
                                        BeContractSwitch, BeFileHeader, BeFlatFile, BeRecord, BeRejected,
                                        BeSwitchCompleted)

__all__ = ["BeFileHeader", "BeContractSwitch", "BeAccountChange", "BeAccepted", "BeRejected",
           "BeSwitchCompleted", "BeAccountLinked", "BeFlatFile"]
