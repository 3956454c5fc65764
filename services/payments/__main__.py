from services.common.service import main
from services.payments.service import setup

if __name__ == "__main__":
    main("payments", setup)
